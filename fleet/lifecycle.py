"""One run's life, as plain functions over a run store: no Celery here.

- the request and its deadline policy (`RunRequest`, `run_deadline_s`): how long a run
  may take, decided once, before anything is published;
- a host's fate (`run_host_job`): the claim first, then the command, then the result;
  whoever holds a host's claim alone decides its status;
- the end (`finalize_run`, `cancel_run`, `settle_run`): hosts without a result become
  `lost` past the deadline, or `cancelled`.

The Celery tasks (`fleet.tasks`) are thin adapters over these; the unit tests call them
with an SQLite store and a scripted execute function.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from fleet.actions import Action
from fleet.celery_config import MAX_RUN_DEADLINE_S
from fleet.command import ExecOptions
from fleet.errors import BackendError, FleetError, RunNotFoundError, UsageError
from fleet.inventory.hosts import DEFAULT_QUEUE, Host
from fleet.results import HostResult, RunRecord, RunReport, Status, utc_now
from fleet.rollout import BATCH_CLAIM, NO_ROLLOUT, Rollout
from fleet.runenv import run_options
from fleet.settings import DEFAULTS, Settings
from fleet.store.protocol import FINALIZER, RunStore

#: Slots assumed when sizing a default deadline for many hosts.
ASSUMED_SLOTS = 64
#: No run may outlast the broker's redelivery of unacked messages (fleet.celery_config).
MAX_DEADLINE_S = MAX_RUN_DEADLINE_S

ExecuteFn = Callable[[Host, str, ExecOptions], HostResult]


class AlreadyClaimed(FleetError):
    """This delivery found its host claimed in the run, so it did not run it.

    `closed`: the run's end claimed it (a cancel, the deadline, a skipped or abandoned
    batch): the host has its status, and no delivery runs it. Otherwise another
    delivery of the same message holds the claim (a broker's redelivery, a replay); that
    delivery reports the host, or the run's deadline does (`lost`) if it died.
    """

    def __init__(self, host: str, *, closed: bool) -> None:
        super().__init__(f"{host}: already claimed in this run; not run again")
        self.host = host
        self.closed = closed


LOST_MESSAGE = "started, but no result by the run deadline (still running, or its worker died)"
CANCELLED_MESSAGE = "run cancelled before this host started"
EXPIRED_MESSAGE = "run already finished when this host's task arrived"
#: How long a finished command's result is retried into an unreachable store (a restart).
SAVE_RETRY_S = 20.0
SAVE_RETRY_FIRST_DELAY_S = 0.2
SAVE_RETRY_MAX_DELAY_S = 2.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunRequest:
    command: str
    pattern: str
    hosts: tuple[Host, ...]
    options: ExecOptions
    deadline_s: float | None = None  # None: derived from the timeouts and the host count
    schedule: str | None = None  # set when Celery beat fires an inventory schedule
    rollout: Rollout = NO_ROLLOUT  # batches, failure budget, fan-out (fleet.rollout)
    action: Action | None = None  # script, copy, fetch instead of `command` (fleet.actions)

    def __post_init__(self) -> None:
        check_command(self.command)
        if self.rollout.max_fail is not None and self.rollout.batch is None:
            raise UsageError(
                f"--max-fail {self.rollout.max_fail} needs --batch: the budget is checked "
                "between batches"
            )


def check_command(command: str) -> None:
    """Raise `UsageError` for an empty or blank command (it would run a login shell's
    nothing on every host and report success)."""
    if not command.strip():
        raise UsageError("empty command: give a shell command to run (e.g. uptime)")


def new_run_id() -> str:
    """Sortable by time, short enough to type: 20261123-221807-3fa9c2."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def run_deadline_s(request: RunRequest) -> float:
    """Seconds the run may take. Raises `UsageError` for a deadline no host could meet."""
    deadline_s = request.deadline_s or default_deadline(
        request.options, len(request.hosts), request.rollout
    )
    if not math.isfinite(deadline_s) or deadline_s <= 0:
        raise UsageError(f"deadline {deadline_s!r}: expected a positive number of seconds")
    if deadline_s > MAX_DEADLINE_S:
        if request.deadline_s:
            raise UsageError(
                f"--deadline {deadline_s:.0f}s is above the limit of {MAX_DEADLINE_S}s"
            )
        raise UsageError(
            f"the run's deadline derived from its timeouts, host count and batches "
            f"({deadline_s:.0f}s) is above the limit of {MAX_DEADLINE_S}s: lower --timeout, "
            "use fewer or larger batches, or give --deadline"
        )
    budget = host_budget(request.options)
    if deadline_s < budget:
        raise UsageError(
            f"--deadline {deadline_s:g}s is shorter than one host's own limits "
            f"(connect + auth + command timeouts = {budget:g}s): "
            "lower --timeout or raise --deadline"
        )
    return deadline_s


#: How each timeout is set, for messages about the ones a user chose.
TIMEOUT_SOURCES = {
    "command_timeout": "--timeout",
    "connect_timeout": "--connect-timeout",
    "auth_timeout": "FLEET_AUTH_TIMEOUT",
}
#: A command timeout shrunk to fit a deadline keeps at least this much (seconds).
MIN_FITTED_COMMAND_S = 1.0
#: Timeouts shrunk to fit a deadline leave this share of it (at most the cap, seconds)
#: for the rest of a host's work (its task's start, the result's save): a host stopped
#: at its own timeout reports `timeout` before the deadline would call it `lost`.
FIT_MARGIN_SHARE = 0.1
FIT_MARGIN_MIN_S = 3.0  # the task's start, a timed-out command's kill (~1 s), the save
FIT_MARGIN_MAX_S = 5.0


def fit_timeouts(
    options: ExecOptions, deadline_s: float | None, explicit: Collection[str]
) -> ExecOptions:
    """`options` with the timeouts the user did not choose shrunk so one host's limits
    fit a deadline the user chose (`deadline_s`, seconds), less a margin
    (`FIT_MARGIN_SHARE`, at most `FIT_MARGIN_MAX_S`): ``--deadline 60`` alone runs with a
    35 s command timeout instead of being refused for the 300 s default.

    The command timeout gives way first; only when that is not enough do the connect and
    auth timeouts shrink too, in proportion. `explicit` names the `TIMEOUT_SOURCES` keys
    the user set: those never change. Raises `UsageError` naming them when they alone
    do not fit.
    """
    budget = host_budget(options)
    if deadline_s is None or budget <= deadline_s:
        return options
    chosen = {name: getattr(options, name) for name in TIMEOUT_SOURCES if name in explicit}
    free = {name: getattr(options, name) for name in TIMEOUT_SOURCES if name not in explicit}
    share = max(FIT_MARGIN_MIN_S, FIT_MARGIN_SHARE * deadline_s)
    margin = min(FIT_MARGIN_MAX_S, share, deadline_s / 2) if free else 0.0
    room = deadline_s - sum(chosen.values()) - margin
    if not free or room <= 0:
        said = " + ".join(f"{TIMEOUT_SOURCES[n]} {v:g}s" for n, v in chosen.items())
        raise UsageError(
            f"--deadline {deadline_s:g}s is shorter than one host's own limits you set "
            f"({said}): lower them or raise --deadline"
        )
    fitted = dict(free)
    others = sum(v for n, v in free.items() if n != "command_timeout")
    if "command_timeout" in free and room - others >= MIN_FITTED_COMMAND_S:
        fitted["command_timeout"] = room - others
    else:
        scale = room / sum(free.values())
        fitted = {name: value * scale for name, value in free.items()}
    return replace(options, **fitted)


def chosen_timeouts(settings: Settings, given: Collection[str] = ()) -> set[str]:
    """The `TIMEOUT_SOURCES` a user chose: `given` (on the command line, to `fleet.run`,
    in a schedule) or set to other than the default (their ``FLEET_*`` variables)."""
    return {
        name
        for name in TIMEOUT_SOURCES
        if name in given or getattr(settings, name) != getattr(DEFAULTS, name)
    }


def host_budget(options: ExecOptions) -> float:
    """The longest one host can take once started: every phase is bounded by these."""
    return options.connect_timeout + options.auth_timeout + options.command_timeout


def default_deadline(options: ExecOptions, host_count: int, rollout: Rollout = NO_ROLLOUT) -> float:
    """Seconds: one host's budget per wave of hosts, plus a minute. A wave is as many
    hosts as run at once: the assumed worker slots, fewer with `--fanout`; batches run
    one after another, so their waves add up."""
    slots = min(ASSUMED_SLOTS, rollout.fanout or ASSUMED_SLOTS)
    sizes = rollout.batch_sizes(host_count)
    waves = max(1, sum(math.ceil(size / slots) for size in sizes))
    return host_budget(options) * waves + 60.0


def run_host_job(
    store: RunStore,
    run_id: str,
    host: Host,
    command: str,
    options: ExecOptions,
    *,
    worker: str,
    execute: ExecuteFn,
    save_retry_s: float = SAVE_RETRY_S,
) -> HostResult:
    """Run `command` on `host` at most once for this run, and record the result.

    The claim is taken before the host is touched: a message delivered twice (broker
    redelivery, a replay) finds the claim taken and never runs the command again
    (`AlreadyClaimed`). Once the command has run, a store outage is retried for
    `save_retry_s` (never by running the command again); if the store stays down the
    host ends `lost` at the run's deadline. Raises `AlreadyClaimed`, and `BackendError`
    only before the command ran.
    """
    # Claim first, then look at the run: whoever holds the claim alone decides the
    # host's fate, so a cancel or the deadline can never label a host that ran.
    # One step (`RunStore.start_host`): claim, is the run live, the `started` event.
    started = store.start_host(run_id, host.name, worker, time.time())
    if started == "taken":
        # Another delivery of this message owns the host; its result (or the deadline's
        # `lost`) is the one that counts: nothing stored here.
        with contextlib.suppress(BackendError):
            store.add_event(run_id, {"type": "duplicate", "host": host.name, "worker": worker})
        raise AlreadyClaimed(host.name, closed=False)
    if started == "closed":  # a message that arrived after the run's end settled its host
        raise AlreadyClaimed(host.name, closed=True)
    if started != "started":
        return _refuse_dead_run(store, run_id, host, worker)
    # The run's --env values come from the store by run id, never from the message.
    prepared = run_options(store, run_id, host, options)
    if isinstance(prepared, HostResult):
        result = prepared.with_worker(worker)
    else:
        result = execute(host, command, prepared).with_worker(worker)
    _save_with_retry(store, run_id, result, save_retry_s)
    return result


def _save_with_retry(store: RunStore, run_id: str, result: HostResult, budget_s: float) -> None:
    give_up = time.monotonic() + budget_s
    delay = SAVE_RETRY_FIRST_DELAY_S
    while True:
        try:
            if not store.save_result(run_id, result):
                # The run was finished at its deadline while this host ran, or this
                # worker was silent long enough to be taken for dead (fleet.orphans):
                # the status there says so; the late outcome goes to the worker's log.
                log.warning(
                    "late result of %s in run %s (%s) not recorded: the host's result "
                    "was recorded already (the run ended, or this worker was taken for dead)",
                    result.host,
                    run_id,
                    result.status.value,
                )
            return
        except BackendError as exc:
            if time.monotonic() + delay > give_up:
                # Not raised: a raising chord member skips the callback, and the run's
                # deadline already accounts for this host (`lost`).
                log.warning("result of %s in run %s not stored: %s", result.host, run_id, exc)
                return
            time.sleep(delay)
            delay = min(delay * 2, SAVE_RETRY_MAX_DELAY_S)


def _refuse_dead_run(store: RunStore, run_id: str, host: Host, worker: str) -> HostResult:
    try:
        state = store.get_run(run_id).state
    except RunNotFoundError:  # expired or unknown run: nothing to record it in
        state = "expired"
    status = Status.CANCELLED if state == "cancelled" else Status.LOST
    message = CANCELLED_MESSAGE if status is Status.CANCELLED else EXPIRED_MESSAGE
    result = HostResult.not_run(host.name, status, message, address=host.address)
    result = result.with_worker(worker)
    if state != "expired":
        store.save_result(run_id, result)
    return result


def finalize_run(store: RunStore, run_id: str, *, now: float | None = None) -> RunReport | None:
    """Finish the run if it can be finished now; return its report, else None.

    A run is finished when every host has a result; when the run was cancelled,
    hosts never claimed get `cancelled`; past the deadline, hosts still without a
    result get `lost`. Idempotent: callers (the chord callback, the following CLI,
    `fleet report`) may all call it.
    """
    now = time.time() if now is None else now
    run = store.get_run(run_id)
    results = store.results(run_id)
    missing = [name for name in run.hosts if name not in results]
    if missing and (run.state == "cancelled" or now >= run.deadline):
        hosts = {h.name: h for h in store.run_hosts(run_id)}
        cancelled = run.state == "cancelled"
        unsent = {} if cancelled else _unpublished_batches(store, run)
        for name in missing:
            host = hosts.get(name)
            address = host.address if host else ""
            if store.claim_host(run_id, name, FINALIZER):
                # Claimed here, so no worker will ever start it.
                status = Status.CANCELLED if cancelled else Status.LOST
                message = CANCELLED_MESSAGE if cancelled else _never_started(host, unsent)
                store.save_result(run_id, HostResult.not_run(name, status, message, address))
            elif now >= run.deadline:
                store.save_result(
                    run_id, HostResult.not_run(name, Status.LOST, LOST_MESSAGE, address)
                )
            # Before the deadline, a cancelled run's host that a worker claimed runs to its end.
    if missing:
        results = store.results(run_id)
        if any(name not in results for name in run.hosts):
            return None
    finished_at = utc_now()
    store.set_state(run_id, "finished", expected="running", finished_at=finished_at)
    store.set_state(run_id, "cancelled", expected="cancelled", finished_at=finished_at)
    report = RunReport.assemble(store.get_run(run_id), list(results.values()))
    store.save_report(report)
    store.drop_env(run_id)  # no host will start any more: its --env values go
    store.add_event(run_id, {"type": "finished"})
    return report


def _unpublished_batches(store: RunStore, run: RunRecord) -> dict[str, str]:
    """Host name -> why it never started, for the hosts of a rolling run's batches that
    were never published: the batch before did not end (a host of it had no result, e.g.
    its worker died mid-command, so its chord never completed)."""
    for first in range(1, len(run.batches)):
        if store.claim_holder(run.run_id, BATCH_CLAIM.format(first)) is None:
            break
    else:
        return {}
    why: dict[str, str] = {}
    for index in range(first, len(run.batches)):
        reason = (
            f"never started by the run deadline: its batch ({index + 1} of "
            f"{len(run.batches)}) was never sent, as batch {first} did not end "
            "(a host of it had no result)"
        )
        why.update(dict.fromkeys(run.batches[index], reason))
    return why


def _never_started(host: Host | None, unsent: Mapping[str, str]) -> str:
    if host is not None and host.name in unsent:
        return unsent[host.name]
    queue = (host.queue if host else None) or DEFAULT_QUEUE
    return (
        "never started by the run deadline: no worker took its task "
        f"(is a worker consuming queue '{queue}'?)"
    )


def cancel_run(store: RunStore, run_id: str) -> bool:
    """Mark the run cancelled: tasks not yet started will refuse to run. True if it was running."""
    changed = store.set_state(run_id, "cancelled", expected="running")
    if changed:
        store.add_event(run_id, {"type": "cancelled"})
        finalize_run(store, run_id)
    return changed


def settle_run(store: RunStore, run_id: str) -> RunReport:
    """Finish the run if it can be finished now (`finalize_run`), then return its report:
    final once finished, else what is known so far (`fleet report`, `fleet runs`)."""
    report = store.load_report(run_id)
    if report is not None and report.is_complete:
        return report
    final = finalize_run(store, run_id)
    if final is not None:
        return final
    run = store.get_run(run_id)
    return RunReport.assemble(run, list(store.results(run_id).values()))
