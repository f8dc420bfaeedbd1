"""A host whose prefork pool process died while it ran the host (the kernel's OOM
killer, a crash in a C extension, a SIGKILL, Celery's hard ``--time-limit``), recorded
`lost` at once by the worker's main process instead of at the run's deadline.

Celery's main process sees the child exit and fails its task with ``WorkerLostError``
(``celery.worker.request.Request.on_failure``), or kills it at a hard time limit
(``Request.on_timeout``); `fleet.pool_request.PoolLossRequest` hooks both. The
dead-worker sweep (`fleet.orphans`) cannot see this death: the child's claims carry its
parent's `PROCESS_ID` (taken at import, before the fork), and the parent beats on.
The failed member also keeps the chord from calling its callback (Celery's Redis
backend raises ``ChordError`` for a failed part), so nothing would finish the run, or
send a rolling run's next batch, before the deadline: the worker's watchdog does it
(`LossWatch`, `fleet.orphans.settle_run`), once every host of the run or of its batch
has a result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from fleet.results import HostResult, Status
from fleet.rollout import fanout_scope
from fleet.store.keys import is_valid_run_id
from fleet.store.protocol import FINALIZER, PROCESS_ID, RunStore
from fleet.textsafe import make_visible_line

#: Seconds past a run's deadline it stays watched: by then `finalize_overdue` has ended it.
WATCH_PAST_DEADLINE_S = 60.0


def pool_loss_message(worker: str, reason: str) -> str:
    """Why a host is `lost`: `worker`'s pool process died (`reason`, Celery's words)."""
    return (
        f"its worker {worker} lost the pool process running it ({reason}): whether the "
        "command ran, or how far, is unknown"
    )


def not_started_message(worker: str, reason: str) -> str:
    """Why a host did not run: `worker`'s pool process died (`reason`) before starting it."""
    return f"not started: its worker {worker} lost the pool process that had taken it ({reason})"


def task_target(args: Any) -> tuple[str, str, str] | None:
    """(run id, host name, address) of a ``fleet.run_on_host`` task's arguments (as its
    message carried them: untrusted), or None when they are not a task's."""
    if not isinstance(args, list | tuple) or len(args) < 2:
        return None
    run_id, host = args[0], args[1]
    if not isinstance(run_id, str) or not is_valid_run_id(run_id):
        return None
    if not isinstance(host, Mapping) or not isinstance(host.get("name"), str):
        return None
    address = host.get("address")
    return run_id, host["name"], address if isinstance(address, str) else ""


def record_pool_loss(
    store: RunStore,
    run_id: str,
    host: str,
    address: str,
    *,
    worker: str,
    reason: str,
    pid: int | None,
) -> Status | None:
    """Record what became of `host` when the pool process `pid` of this worker (node
    name `worker`) died holding its task. Returns the status recorded, or None.

    - The process had started the host (its claim names this worker's `PROCESS_ID` and
      `pid`): `lost`, and the host's ``--fanout`` slot, which the dead process cannot
      give back, is released.
    - Nobody had started it (a start claims the host first): it is closed with the
      run's finalizer claim, so that no later copy of its message starts it, and
      recorded `error`, "not started".
    - Otherwise (a result recorded already: first write wins; a claim of another
      process, such as a copy of the message refused while a sibling pool process or
      another worker runs the host; `pid` unknown): nothing, None.

    Raises `BackendError` when the store fails."""
    if pid is None:
        return None
    holder = store.claim_holders(run_id, [host]).get(host)
    if holder is None:
        if not store.claim_host(run_id, host, FINALIZER):
            return None
        text = not_started_message(worker, make_visible_line(reason)[:200])
        status = Status.ERROR
    elif holder[1] == PROCESS_ID and store.claim_pids(run_id, [host]).get(host) == pid:
        text = pool_loss_message(holder[0], make_visible_line(reason)[:200])
        status = Status.LOST
    else:
        return None
    result = HostResult.not_run(host, status, text, address).with_worker(worker)
    recorded = store.save_result(run_id, result)
    store.release_slot(fanout_scope(run_id), host)  # nothing if the run has no --fanout
    return status if recorded else None


class LossWatch:
    """The runs that lost a host with a pool process, until they end: the watchdog
    settles them each round (`fleet.orphans.settle_run`). Thread-safe: the main
    process's event loop adds, the watchdog's thread reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: set[str] = set()

    def add(self, run_id: str) -> None:
        with self._lock:
            self._runs.add(run_id)

    def runs(self) -> list[str]:
        with self._lock:
            return sorted(self._runs)

    def drop(self, run_id: str) -> None:
        with self._lock:
            self._runs.discard(run_id)


#: This process's runs that lost a host with a pool process (a prefork worker's main
#: process adds, its watchdog settles).
LOSSES = LossWatch()


def done_watching(finished: bool, deadline: float, now: float | None = None) -> bool:
    """True once a watched run needs no more rounds: it ended, or its deadline is
    `WATCH_PAST_DEADLINE_S` behind (the deadline sweep ends it)."""
    now = time.time() if now is None else now
    return finished or now >= deadline + WATCH_PAST_DEADLINE_S
