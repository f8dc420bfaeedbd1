"""The run watchdog: finishes runs whose deadline has passed, whether or not anyone follows.

A run whose chord callback never fires (a worker died holding a task) and whose
CLI detached would otherwise stay `running` until somebody reads it. Each worker
runs `finalize_overdue` every few seconds; `finalize_run` is idempotent, so several
workers doing it at once is harmless.
"""

from __future__ import annotations

import logging
import threading
import time

from fleet.errors import CorruptRecordError, FleetError
from fleet.lifecycle import finalize_run
from fleet.store.protocol import RunStore

#: Newest runs looked at per sweep: overdue runs are recent (deadlines are at most 11 h).
SWEEP_LIMIT = 500

log = logging.getLogger(__name__)


def finalize_overdue(store: RunStore, now: float | None = None) -> list[str]:
    """Finish every recent run still `running` past its deadline; return their ids."""
    now = time.time() if now is None else now
    finished = []
    for run in store.list_runs(limit=SWEEP_LIMIT):
        overdue = run.finished_at is None and now >= run.deadline
        try:
            if overdue and finalize_run(store, run.run_id, now=now) is not None:
                finished.append(run.run_id)
        except CorruptRecordError as exc:  # one run's tampered data, not the store failing
            log.warning("watchdog: run %s not finished: %s", run.run_id, exc)
        except FleetError:
            raise  # the store itself failing: the whole sweep waits for the next round
        except Exception as exc:  # one run's bad data must not stop the others'
            log.warning("watchdog: run %s not finished: %s: %s", run.run_id,
                        type(exc).__name__, str(exc)[:200])  # fmt: skip
    return finished


class Watchdog:
    """A daemon thread calling `finalize_overdue` every `interval_s` seconds."""

    def __init__(self, store: RunStore, interval_s: float) -> None:
        self._store = store
        self._interval_s = interval_s
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
