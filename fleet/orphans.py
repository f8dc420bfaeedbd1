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

from collections.abc import Mapping
from dataclasses import dataclass

from fleet.lifecycle import finalize_run
from fleet.results import HostResult, RunRecord, Status
from fleet.rollout import BATCH_CLAIM
from fleet.store.keys import epoch
from fleet.store.protocol import Holder, RunStore
from fleet.sweeps import one_run

#: Newest runs looked at per sweep (as the watchdog's).
SWEEP_LIMIT = 500
#: Seconds a submitter's clock may be ahead of the store's.
CLOCK_MARGIN_S = 60.0

#: The claim that makes one sweeper, once, continue a rolling run after batch K
#: (0-based) whose chord cannot complete (never a host name: names hold no control
#: character).
RESUME_CLAIM = "\x00resume:{}"


@dataclass(frozen=True, slots=True)
class Orphaned:
    """What one sweep did to one run: `lost`, the hosts recorded lost; `resume`, a
    rolling run's batch (0-based) to continue after (the caller sends its chord
    callback), or None."""

    run_id: str
    deadline: float  # the run's, epoch seconds: a resumed batch's message expires then
    lost: tuple[str, ...]
    resume: int | None = None


def orphan_message(worker: str, dead_after_s: float) -> str:
    return (
        f"its worker {worker} stopped (no sign of life for {dead_after_s:g} s) while it "
        "held the host: whether the command ran, or how far, is unknown"
    )


def settle_orphans(
    store: RunStore,
    dead: Mapping[Holder, float],
    *,
    sweeper: str,
    dead_after_s: float,
    limit: int = SWEEP_LIMIT,
) -> list[Orphaned]:
    """Record `lost` every host of an unfinished run whose claim is held by one of the
    `dead` worker processes (`RunStore.dead_workers`: each with when it died); finish
    the runs that this completes, and say which rolling runs' batches to continue.
    `sweeper`: this worker's name (the resume claim's holder). Raises `BackendError`.

    Runs created after the last of those deaths (`CLOCK_MARGIN_S` allowed for the
    submitter's clock) are not looked at: no dead process claimed any of their hosts.
    A worker stopped for a deploy is listed dead for an hour, and would otherwise cost
    every sweep every unfinished run's results."""
    done: list[Orphaned] = []
    if not dead:
        return done
    last_death = max(dead.values()) + CLOCK_MARGIN_S
    for run in store.list_runs(limit=limit):
        with one_run(run.run_id, "orphaned hosts not settled"):
            if run.finished_at is None and epoch(run.created_at) <= last_death:
                outcome = _settle_run(store, run, set(dead), sweeper, dead_after_s)
                if outcome is not None:
                    done.append(outcome)
    return done


def _settle_run(
    store: RunStore, run: RunRecord, dead: set[Holder], sweeper: str, dead_after_s: float
) -> Orphaned | None:
    results = store.results(run.run_id)
    missing = [name for name in run.hosts if name not in results]
    holders = store.claim_holders(run.run_id, missing)
    orphans = [name for name in missing if holders.get(name) in dead]
    if orphans:
        addresses = {h.name: h.address for h in store.run_hosts(run.run_id)}
        for name in orphans:
            worker = holders[name][0]
            lost = HostResult.not_run(
                name, Status.LOST, orphan_message(worker, dead_after_s), addresses.get(name, "")
            )
            store.save_result(run.run_id, lost.with_worker(worker))
        results = store.results(run.run_id)
    resume = _batch_to_resume(store, run, results) if run.batches else None
    if resume is not None and not store.claim_host(
        run.run_id, RESUME_CLAIM.format(resume), sweeper
    ):
        resume = None  # another sweeper continues it
    if resume is None and (orphans or all(name in results for name in run.hosts)):
        # No chord callback will finish it: finish it here if it can be (a cancelled
        # run's unclaimed hosts end `cancelled` on the way).
        finalize_run(store, run.run_id)
    if not orphans and resume is None:
        return None
    return Orphaned(run.run_id, run.deadline, tuple(orphans), resume)


def _batch_to_resume(store: RunStore, run: RunRecord, results: dict[str, HostResult]) -> int | None:
    """The rolling run's current batch (the last one sent), if it has ended with a host
    recorded `lost` (its chord cannot complete) and a batch follows it."""
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
    if not any(results[name].status is Status.LOST for name in names):
        return None
    return current
