"""Hosts whose worker died while holding them, recorded `lost` as soon as the worker is
known dead (`fleet.liveness`) instead of at the run's deadline, which the command
timeout (300 s by default) puts minutes away.

A worker holds a host from its claim (`RunStore.start_host`) until it stores the host's
result. Once its liveness has lapsed, nothing will store that result: the worker was
killed, lost its machine, or froze past ``FLEET_WORKER_DEAD_AFTER``. The command may
have run, in full or in part; `lost` says nobody knows. A worker that was only frozen
and comes back finds the result recorded: its own is refused (first write wins) and
goes to its log.

Then the run goes on as if the host had failed: a run whose every host has a result
finishes; in a rolling run, the batch's chord can no longer complete (the dead
worker's task never returns, and a redelivered copy of its message finds the host
claimed and does not count), so the batch is continued from here, the way its chord
callback would have (`--max-fail` counts the lost host).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from fleet.errors import FleetError
from fleet.lifecycle import finalize_run
from fleet.results import HostResult, RunRecord, Status
from fleet.rollout import BATCH_CLAIM
from fleet.store.keys import epoch
from fleet.store.protocol import Holder, RunStore, Slot
from fleet.sweeps import one_run
from fleet.textsafe import exception_line

log = logging.getLogger(__name__)

#: Newest runs looked at per sweep (as the watchdog's).
SWEEP_LIMIT = 500
#: Seconds a submitter's clock may be ahead of the store's.
CLOCK_MARGIN_S = 60.0

#: The slot (`RunStore.take_slot`) that lets one sweeper at a time continue a rolling
#: run after one of its batches: held `hold_s` seconds, so that a sending that failed is
#: tried again by a later sweep (a second sending is harmless: the next batch's own
#: claim publishes it once, `fleet.batches.next_batch`).
RESUME_SCOPE = "resume:{}:{}"
#: After a sending, the slot is held this many times `hold_s` more.
RESUME_AGAIN_AFTER = 10


@dataclass(frozen=True, slots=True)
class Orphaned:
    """What one sweep did to one run: `lost`, the hosts it recorded lost; `resumed`, a
    rolling run's batch (0-based) whose chord callback it sent, or None."""

    run_id: str
    lost: tuple[str, ...]
    resumed: int | None = None


#: `resume(run_id, batch, deadline)`: send the chord callback of the run's batch (0-based),
#: expiring at the run's deadline (epoch seconds). Raises what the broker raises.
Resume = Callable[[str, int, float], None]


def orphan_message(worker: str, died_at: float) -> str:
    """Why a host is `lost`: its worker counted as dead at `died_at` (epoch seconds)."""
    when = datetime.fromtimestamp(died_at, UTC).strftime("%H:%M:%S UTC")
    return (
        f"its worker {worker} stopped (silent, counted dead at {when}) while it held the "
        "host: whether the command ran, or how far, is unknown"
    )


def settle_orphans(
    store: RunStore,
    dead: Mapping[Holder, float],
    *,
    sweeper: str,
    resume: Resume | None,
    hold_s: float,
    limit: int = SWEEP_LIMIT,
) -> list[Orphaned]:
    """Record `lost` every host of an unfinished run whose claim is held by one of the
    `dead` worker processes (each with when it counted dead, epoch seconds); finish the
    runs this completes, and continue the rolling runs whose batch ended with such a
    host (`resume`; `sweeper`, this worker's name, holds the resume slot `hold_s`
    seconds). One run's bad record or failed sending is logged and skipped
    (`fleet.sweeps`); raises `BackendError` when the store fails.

    Runs created after the last of those deaths (`CLOCK_MARGIN_S` allowed for the
    submitter's clock) are not looked at: no dead process claimed any of their hosts."""
    done: list[Orphaned] = []
    if not dead:
        return done
    last_death = max(dead.values()) + CLOCK_MARGIN_S
    for run in store.list_runs(limit=limit):
        with one_run(run.run_id, "orphaned hosts not settled"):
            if run.finished_at is None and epoch(run.created_at) <= last_death:
                outcome = _settle_run(store, run, dead, sweeper, resume, hold_s)
                if outcome is not None:
                    done.append(outcome)
    return done


def settle_run(
    store: RunStore, run: RunRecord, *, sweeper: str, resume: Resume | None, hold_s: float
) -> Orphaned | None:
    """Finish `run` once every host has a result, or continue it (`resume`) once its
    current batch has ended, whatever its hosts' statuses: what its chord callback would
    have done, for a run whose chord cannot call it (a member failed: `fleet.pool_loss`;
    a second sending of a callback that did come is harmless, as below). As
    `settle_orphans` for one run with no dead worker; raises what it raises."""
    return _settle_run(store, run, {}, sweeper, resume, hold_s, any_status=True)


def _settle_run(
    store: RunStore,
    run: RunRecord,
    dead: Mapping[Holder, float],
    sweeper: str,
    resume: Resume | None,
    hold_s: float,
    *,
    any_status: bool = False,
) -> Orphaned | None:
    results = store.results(run.run_id)
    missing = [name for name in run.hosts if name not in results]
    holders = store.claim_holders(run.run_id, missing) if dead else {}  # none to find
    orphans = [name for name in missing if holders.get(name) in dead]
    lost: list[str] = []
    if orphans:
        addresses = {h.name: h.address for h in store.run_hosts(run.run_id)}
        for name in orphans:
            worker = holders[name][0]
            message = orphan_message(worker, dead[holders[name]])
            result = HostResult.not_run(name, Status.LOST, message, addresses.get(name, ""))
            if store.save_result(run.run_id, result.with_worker(worker)):
                lost.append(name)  # else: the worker came back and recorded it first
        results = store.results(run.run_id)
    batch = _batch_to_resume(store, run, results, any_status) if run.batches else None
    resumed = None
    if batch is not None and resume is not None:
        scope = RESUME_SCOPE.format(run.run_id, batch)
        if store.take_slot(scope, sweeper, 1, hold_s) is Slot.TAKEN:
            try:
                resume(run.run_id, batch, run.deadline)
            except Exception as exc:  # the broker, or a bad deadline: say so, go on
                log.warning("run %s: batch %d not resumed: %s: %s", run.run_id, batch + 1,
                            type(exc).__name__, exception_line(exc))  # fmt: skip
                with contextlib.suppress(FleetError):
                    store.release_slot(scope, sweeper)  # the next sweep tries again
            else:
                resumed = batch
                # Sent: a callback waiting in a busy queue is not sent again soon.
                with contextlib.suppress(FleetError):
                    store.release_slot(scope, sweeper, linger_s=RESUME_AGAIN_AFTER * hold_s)
    elif orphans or all(name in results for name in run.hosts):
        # No chord callback will finish it: finish it here if it can be (a cancelled
        # run's unclaimed hosts end `cancelled` on the way).
        finalize_run(store, run.run_id)
    if not lost and resumed is None:
        return None
    return Orphaned(run.run_id, tuple(lost), resumed)


def _batch_to_resume(
    store: RunStore, run: RunRecord, results: dict[str, HostResult], any_status: bool
) -> int | None:
    """The rolling run's current batch (the last one sent), if it has ended with a host
    recorded `lost` (its chord cannot complete; with `any_status`, whatever the
    statuses) and a batch follows it."""
    later = [BATCH_CLAIM.format(k) for k in range(1, len(run.batches))]
    sent = store.claim_holders(run.run_id, later)
    current = 0
    while current + 1 < len(run.batches) and BATCH_CLAIM.format(current + 1) in sent:
        current += 1
    if current + 1 >= len(run.batches) or run.state != "running":
        return None
    names = run.batches[current]
    if not all(name in results for name in names):
        return None
    if not any_status and not any(results[name].status is Status.LOST for name in names):
        return None
    return current
