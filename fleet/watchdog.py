"""The run watchdog: finishes runs whose deadline has passed, whether or not anyone follows.

A run whose chord callback never fires (a worker died holding a task) and whose
CLI detached would otherwise stay `running` until somebody reads it. Each worker
runs `finalize_overdue` every few seconds; `finalize_run` is idempotent, so several
workers doing it at once is harmless. The same thread records the hosts of dead
workers `lost` (`fleet.orphans`) well before the deadline.
"""

from __future__ import annotations

import logging
import threading
import time

from fleet.errors import FleetError, RunNotFoundError
from fleet.lifecycle import finalize_run
from fleet.liveness import Liveness
from fleet.orphans import Orphaned, Resume, settle_orphans, settle_run
from fleet.pool_loss import LossWatch, done_watching
from fleet.store.protocol import Holder, RunStore
from fleet.sweeps import one_run

#: Newest runs looked at per sweep: overdue runs are recent (deadlines are at most 11 h).
SWEEP_LIMIT = 500
#: A dead worker's hosts are looked for this long after its death (seconds): a rolling
#: run's batch that ends later than that continues at the run's deadline, not before.
DEAD_LISTED_S = 3600.0

log = logging.getLogger(__name__)


def finalize_overdue(store: RunStore, now: float | None = None) -> list[str]:
    """Finish every recent run still `running` past its deadline; return their ids."""
    now = time.time() if now is None else now
    finished = []
    for run in store.list_runs(limit=SWEEP_LIMIT):
        overdue = run.finished_at is None and now >= run.deadline
        with one_run(run.run_id, "not finished by the watchdog"):
            if overdue and finalize_run(store, run.run_id, now=now) is not None:
                finished.append(run.run_id)
    return finished


class Watchdog:
    """A daemon thread calling `finalize_overdue` every `interval_s` seconds and, with
    `liveness` (this worker's, `fleet.liveness.Liveness`), `settle_orphans` for the
    hosts of workers found dead, and `settle_run` for the runs in `losses` (a host lost
    with a prefork pool process, `fleet.pool_loss`); `resume(run_id, batch, deadline)`
    sends the chord callback of a rolling run's batch that a lost host kept from ending."""

    def __init__(
        self,
        store: RunStore,
        interval_s: float,
        liveness: Liveness | None = None,
        resume: Resume | None = None,
        losses: LossWatch | None = None,
    ) -> None:
        self._store = store
        self._losses = losses
        self._interval_s = interval_s
        self._liveness = liveness
        self._resume = resume
        # Seen dead at the last sweep: process -> (its time alive, when first seen).
        self._suspects: dict[Holder, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleet-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                for run_id in finalize_overdue(self._store):
                    log.warning("run %s finished by the watchdog at its deadline", run_id)
            except FleetError as exc:  # the store restarting: try again next round
                log.warning("watchdog sweep failed: %s", exc)
            except Exception:  # a bug must not end the thread: runs would never finish
                log.exception("watchdog sweep failed")
            if self._liveness is not None:
                self._sweep_orphans(self._liveness)
                if self._losses is not None:
                    self._settle_losses(self._liveness.worker, self._losses)

    def _sweep_orphans(self, liveness: Liveness) -> None:
        if not liveness.judging():
            self._suspects.clear()
            return
        try:
            found = self._store.dead_workers(DEAD_LISTED_S, liveness.worker, liveness.ttl_s / 2)
            dead = self._confirmed(found, liveness.beat_s)
            hold_s = 3 * self._interval_s
            for done in settle_orphans(
                self._store, dead, sweeper=liveness.worker, resume=self._resume, hold_s=hold_s
            ):
                _say(done)
        except FleetError as exc:
            log.warning("watchdog: orphaned hosts not settled: %s", exc)
        except Exception:
            log.exception("watchdog: orphaned hosts not settled")

    def _settle_losses(self, worker: str, losses: LossWatch) -> None:
        for run_id in losses.runs():
            try:
                with one_run(run_id, "not settled after a lost pool process"):
                    run = self._store.get_run(run_id)
                    if done_watching(run.finished_at is not None, run.deadline):
                        losses.drop(run_id)
                        continue
                    done = settle_run(
                        self._store,
                        run,
                        sweeper=worker,
                        resume=self._resume,
                        hold_s=3 * self._interval_s,
                    )
                    if done is not None:
                        _say(done)
            except RunNotFoundError:
                losses.drop(run_id)
            except FleetError as exc:  # the store restarting: the next round tries again
                log.warning("watchdog: run %s not settled: %s", run_id, exc)

    def _confirmed(self, found: dict[Holder, float], beat_s: float) -> dict[Holder, float]:
        """The processes `found` dead at this sweep and at an earlier one at least two
        beats before, with the same time alive: one that only seemed dead for a moment
        (a clock step, a restart of the store) has beaten again by then."""
        now = time.monotonic()
        seen = self._suspects
        self._suspects = {
            h: (until, seen[h][1] if h in seen and seen[h][0] == until else now)
            for h, until in found.items()
        }
        return {
            h: until for h, (until, first) in self._suspects.items() if now - first >= 2 * beat_s
        }


def _say(done: Orphaned) -> None:
    if done.lost:
        log.warning(
            "run %s: %s recorded lost: the worker holding them stopped",
            done.run_id,
            ", ".join(done.lost),
        )
    if done.resumed is not None:
        log.warning("run %s goes on after batch %d", done.run_id, done.resumed + 1)
