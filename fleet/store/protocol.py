"""The run store's interface, free of any backend import.

Two implementations: `fleet.store.RedisRunStore` (distributed mode, the only module
that imports redis) and `fleet.store.sqlite_store.SqliteRunStore` (embedded mode). Code
that only needs "a run store" imports this module, so embedded mode never loads redis.

Every method raises `BackendError` when the store cannot be reached or fails;
`get_run` raises `RunNotFoundError` for an unknown or expired run.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fleet.audit import AuditEntry
from fleet.errors import BackendError, CorruptRecordError
from fleet.inventory.hosts import Host
from fleet.results import HostResult, RunRecord, RunReport, Status
from fleet.textsafe import make_visible_line

#: The claim the run's end takes on hosts no worker started (cancel, deadline, a skipped
#: or abandoned batch), so none ever will (`fleet.lifecycle.finalize_run`).
FINALIZER = "fleet-finalizer"

#: This process's id in the claims it takes to start hosts (`RunStore.start_host`) and in
#: its liveness (`RunStore.beat_alive`): a worker restarted under the same node name is
#: another process, so the hosts its predecessor held are found orphaned all the same
#: (`fleet.orphans`).
PROCESS_ID = uuid.uuid4().hex[:16]

#: Who holds a host's claim: (worker node name, `PROCESS_ID` of the process that took
#: it; "" where the store keeps none).
Holder = tuple[str, str]

#: Run states. A run is created `running`; `finished` or `cancelled` end it.
RUNNING = "running"
FINISHED = "finished"
CANCELLED = "cancelled"


class Slot(enum.IntEnum):
    """What `RunStore.take_slot` did; true when the holder has the slot now."""

    FULL = 0  #: every slot is held by others: none taken
    TAKEN = 1  #: taken by this call
    HELD = 2  #: the holder had it already (another delivery of the same task message)


def not_found_message(run_id: str, retention: int) -> str:
    """The one wording of "no such run", shared by both stores."""
    days = retention / 86400
    age = f"{days:g} days" if days >= 1 else f"{retention} seconds"
    return f"run {run_id!r} not found (expired after {age}, or never existed)"


def result_event(result: HostResult) -> dict[str, str]:
    """The progress event `save_result` appends when it stores a result."""
    return {"type": "result", "host": result.host, "status": result.status.value}


@dataclass(frozen=True, slots=True)
class BeatState:
    """A schedule's state shared by every beat process (in the run store, not a shelve
    file beside one of them)."""

    last_slot: int | None = None  # epoch seconds of the last firing's slot
    last_run_id: str | None = None
    skipped: int = 0


def beat_state_from(slot: str | None, run_id: str | None, skipped: str | None) -> BeatState:
    """A `BeatState` from stored text, checked: anything malformed reads as unknown."""
    try:
        last_slot = int(slot) if slot is not None else None
        count = int(skipped) if skipped is not None else 0
    except ValueError:
        return BeatState()
    return BeatState(last_slot, run_id or None, count)


_log = logging.getLogger("fleet.store")


def listed_run(run_id: str, decode: Callable[[], RunRecord | None]) -> RunRecord | None:
    """`decode()`, or None after a warning naming `run_id` when its stored record cannot
    be read (tampered, or written by something else): listing runs and the watchdog's
    sweep go on with the others instead of failing for everyone."""
    try:
        return decode()
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = make_visible_line(f"{type(exc).__name__}: {exc}")[:200]
        _log.warning("run %s: its record in the store is unreadable, skipped (%s)",
                     make_visible_line(run_id), reason)  # fmt: skip
        return None


def read_run(run_id: str, decode: Callable[[], RunRecord | None]) -> RunRecord | None:
    """`decode()`; when the stored record cannot be read, `CorruptRecordError` naming
    `run_id` and why (``fleet report`` says so in one line, exit 3)."""
    try:
        return decode()
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = make_visible_line(f"{exc}")[:200]
        raise CorruptRecordError(
            f"run {make_visible_line(run_id)}: its record in the store is unreadable ({reason})"
        ) from None


#: The error of a host whose stored result cannot be read (its status is `error`).
UNREADABLE_RESULT = "its result in the store is unreadable"


def stored_result(run_id: str, host: str, decode: Callable[[], HostResult]) -> HostResult:
    """`decode()`, checked to be `host`'s; when it cannot be read (tampered, or written
    by something else), a warning naming the run and host, and in its place an `error`
    result for `host` saying why: a report shows every other host as it is, and this
    one marked, never its raw content."""
    try:
        result = decode()
        if result.host != host:
            raise CorruptRecordError(f"host result: host: stored under {host!r}")
        return result
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = make_visible_line(f"{exc}")[:200]
        _log.warning("run %s: the result of host %s is unreadable (%s)",
                     make_visible_line(run_id), make_visible_line(host), reason)  # fmt: skip
        return HostResult.not_run(host, Status.ERROR, f"{UNREADABLE_RESULT} ({reason})")


def start_in_steps(store: RunStore, run_id: str, host: str, worker: str, now: float) -> str:
    """`RunStore.start_host` as its three steps, for a store with no cheaper way."""
    if not store.claim_host(run_id, host, worker):
        return "closed" if store.claim_holder(run_id, host) == FINALIZER else "taken"
    if not store.is_live(run_id, now):
        return "not_live"
    # A progress event is worth less than the run: the host is claimed, so go on.
    with contextlib.suppress(BackendError):
        store.add_event(run_id, {"type": "started", "host": host, "worker": worker})
    return "started"


class RunStore(Protocol):
    """Run records, per-host claims and results, progress events and reports."""

    def ping(self) -> None:
        """Raise `BackendError` (within a few seconds) if the store is unreachable."""

    def check_server(self) -> str | None:
        """A warning about the server's configuration worth logging, or None."""

    def create_run(self, run: RunRecord, hosts: Sequence[Host]) -> None:
        """Record a new run and the `Host` values it targets."""

    def get_run(self, run_id: str) -> RunRecord:
        """The run record. Raises `RunNotFoundError` (expired or unknown)."""

    def run_hosts(self, run_id: str) -> tuple[Host, ...]:
        """The `Host` values given to `create_run`, in order (empty if unknown)."""

    def claim_host(self, run_id: str, host: str, worker: str) -> bool:
        """Atomically claim a host for this run: True for the first claimer only, ever."""

    def start_host(self, run_id: str, host: str, worker: str, now: float) -> str:
        """`claim_host`, then `is_live` at `now` (epoch seconds), then the ``started``
        event, as one step: ``"taken"`` (a worker's claim: nothing done), ``"closed"``
        (the run's end claimed the host, `FINALIZER`: nothing done), ``"not_live"``
        (claimed, but the run is over) or ``"started"``."""

    def claim_holder(self, run_id: str, host: str) -> str | None:
        """Who claimed the host in this run (a worker's name, `FINALIZER`), or None."""

    def is_live(self, run_id: str, now: float | None = None) -> bool:
        """True if the run exists, is `running` and its deadline has not passed."""

    def set_state(
        self,
        run_id: str,
        state: str,
        *,
        expected: str = RUNNING,
        finished_at: str | None = None,
    ) -> bool:
        """Compare-and-set the run's state; True if it was `expected` and is now `state`."""

    def save_result(self, run_id: str, result: HostResult) -> bool:
        """Store a host's result unless one is stored (first write wins).

        When stored, also appends the progress event `result_event(result)`.
        Returns whether it is the stored one: True also when the very same result was
        stored before (this call, resent after its reply was lost), without a second
        event.
        """

    def results(self, run_id: str) -> dict[str, HostResult]:
        """Every stored result of the run, by host name."""

    def add_event(self, run_id: str, event: Mapping[str, str]) -> str:
        """Append a progress event; returns its id."""

    def events(
        self, run_id: str, after: str = "0", block_ms: int = 0, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        """Events with an id after `after` ("0": from the start), oldest first.

        With `block_ms` > 0, waits up to that long for one to arrive (the wait may
        be capped by the backend's socket timeout; an empty list is not an end).
        """

    def save_report(self, report: RunReport) -> None:
        """Mark the run's report final, storing only its summary (`codec.summary_json`):
        the results themselves are stored once, by `save_result`."""

    def load_report(self, run_id: str) -> RunReport | None:
        """The final report (the record and every stored result), or None before
        `save_report`."""

    def list_runs(self, limit: int = 20, host: str | None = None) -> list[RunRecord]:
        """The most recent runs, newest first; with `host`, only runs that targeted it."""

    def take_slot(self, scope: str, holder: str, limit: int, hold_s: float) -> Slot:
        """Take one of `scope`'s `limit` slots for `holder`, held at most `hold_s` seconds
        (a holder that dies frees it then), shared by every process using the store:
        `Slot.TAKEN`, `Slot.FULL` if all are taken, `Slot.HELD` if `holder` has one
        already (then it is not taken again, and its hold time is unchanged). Scopes:
        ``fanout:RUN_ID`` (`fleet.rollout`), ``handshake:ADDRESS:PORT`` (`fleet.ssh.handshakes`)."""

    def release_slot(self, scope: str, holder: str, linger_s: float = 0.0) -> None:
        """Give `holder`'s slot of `scope` back `linger_s` seconds from now (0: at once;
        nothing if it holds none)."""

    def register_worker(self, personals: Mapping[str, str], ttl_s: float) -> None:
        """Register (or refresh) a worker's personal queues, each under its plain queue
        (`personals`: plain queue -> personal queue), for `ttl_s` seconds
        (`fleet.affinity`)."""

    def retire_worker(self, personals: Mapping[str, str]) -> None:
        """Expire the registrations of `personals` (as for `register_worker`) now,
        without dropping them: no submitter routes to them any more, and
        `expired_workers` lists them so that the other workers move the messages still
        in those queues (`fleet.affinity`)."""

    def live_workers(self, queues: Sequence[str], min_left_s: float) -> dict[str, list[str]]:
        """Per queue of `queues`, the personal queues whose registration holds more than
        `min_left_s` seconds still (a store that keeps none: {})."""

    def expired_workers(self, queues: Sequence[str], drop_after_s: float) -> dict[str, list[str]]:
        """Per queue, the personal queues whose registration expired (their messages are
        orphans); registrations expired more than `drop_after_s` seconds ago are dropped."""

    def beat_alive(self, worker: str, ttl_s: float) -> float:
        """Record that this process, the worker named `worker` (its Celery node name, the
        name its claims hold), counts as alive for `ttl_s` more seconds of the store's
        clock (`fleet.liveness`); returns that clock's time now (epoch seconds)."""

    def forget_alive(self, worker: str) -> None:
        """Drop this process's liveness: it ended holding no host (a warm shutdown)."""

    def dead_workers(self, within_s: float, judge: str, min_left_s: float) -> dict[Holder, float]:
        """The worker processes whose time alive passed within the last `within_s`
        seconds, each with that time (epoch seconds, the store's clock); older ones are
        dropped. Asked by this process, the worker `judge`: nothing unless its own time
        alive holds `min_left_s` seconds more (its own beat landed lately by the store's
        clock, so a clock step or a pause of its own hides nobody's beat), and never
        itself. A store whose workers cannot outlive its reader: {}."""

    def claim_holders(self, run_id: str, hosts: Sequence[str]) -> dict[str, Holder]:
        """Who holds the claim of each of `hosts` in the run, for the hosts claimed, in
        one round trip."""

    def claim_pids(self, run_id: str, hosts: Sequence[str]) -> dict[str, int]:
        """The OS pid of the process that started each of `hosts` in the run, for the
        hosts started where the store keeps one (a prefork pool process's, not its
        parent's: `fleet.pool_loss`), in one round trip."""

    def stage_env(self, run_id: str, values: Mapping[str, str], ttl_s: float) -> None:
        """Keep the run's `--env` values (NAME -> value) for the workers, out of every
        task message and of the run record, for `ttl_s` seconds (at most the retention)."""

    def staged_env(self, run_id: str) -> dict[str, str] | None:
        """The values `stage_env` kept for the run, or None (none, expired or dropped)."""

    def drop_env(self, run_id: str) -> None:
        """Forget the run's staged values (the run finished; nothing if there are none)."""

    def claim_slot(self, schedule: str, slot: int, ttl_s: int) -> bool:
        """Take firing slot `slot` (epoch seconds) of `schedule`; False if another beat
        process took it first. The claim is kept `ttl_s` seconds: only as long as another
        beat could still be about to fire the same slot."""

    def record_firing(self, schedule: str, slot: int, run_id: str) -> None:
        """Remember the run that `schedule`'s firing at `slot` started."""

    def count_skip(self, schedule: str) -> int:
        """Count one firing of `schedule` skipped; return the count so far."""

    def beat_state(self, schedule: str) -> BeatState:
        """What beat knows of `schedule`: its last firing and skipped count."""

    def append_audit(self, entry: AuditEntry) -> None:
        """Append `entry` to the audit log (`fleet.audit`): append-only, apart from runs,
        kept for its own retention (``FLEET_AUDIT_RETENTION``)."""

    def audit_entries(self, since: float | None = None, limit: int = 100) -> list[AuditEntry]:
        """At most `limit` audit entries, newest first, from `since` (epoch seconds) on;
        one that cannot be read is skipped with a warning naming it."""

    def blob_put_chunk(self, run_id: str, name: str, index: int, data: bytes, ttl_s: int) -> None:
        """Store chunk `index` (0, 1, ... in order) of the run's staged file `name`
        (`fleet.staging`), kept `ttl_s` seconds at most; chunk 0 drops older chunks."""

    def blob_chunk(self, run_id: str, name: str, index: int) -> bytes | None:
        """Chunk `index` of the run's staged file `name`, or None (none, or expired)."""

    def blob_delete(self, run_id: str) -> None:
        """Delete every file staged for the run."""

    def close(self) -> None:
        """Release connections. The store is unusable afterwards."""
