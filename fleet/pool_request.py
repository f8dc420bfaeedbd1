"""The worker-side request of ``fleet.run_on_host`` (Celery "Custom request classes",
``Task.Request``): where a prefork worker's main process learns that the pool process
running a host died, and hands the host to `fleet.pool_loss`. Celery glue only: the
rules are in `fleet.pool_loss`.
"""

from __future__ import annotations

import threading
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import WorkerLostError
from celery.signals import worker_ready
from celery.utils.log import get_logger
from celery.worker.request import Request

from fleet.errors import FleetError
from fleet.pool_loss import LOSSES, record_pool_loss, task_target
from fleet.textsafe import exception_line
from fleet.worker import worker_store

log = get_logger(__name__)

_prefork = False  # this worker's pool is prefork: set when it is ready


@worker_ready.connect  # type: ignore[untyped-decorator]
def _note_pool(sender: Any = None, **_: Any) -> None:
    global _prefork
    from celery.concurrency.prefork import TaskPool

    controller = getattr(sender, "controller", sender)
    pool_cls = getattr(controller, "pool_cls", None)
    _prefork = isinstance(pool_cls, type) and issubclass(pool_cls, TaskPool)


class PoolLossRequest(Request):  # type: ignore[misc]  # celery ships no type hints
    """Celery's request of a `fleet.run_on_host` task in the worker's main process
    (``Task.Request``, Celery "Custom request classes"). When the prefork pool process
    running it died (``WorkerLostError``) or was ended by a hard time limit
    (``--time-limit``), its host is recorded now (`fleet.pool_loss`), by a thread: the
    main process's event loop must not wait on the run store. fleet's tasks never fail
    otherwise."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = getattr(exc_info, "exception", None)
        if isinstance(exc, ExceptionWithTraceback):  # as Celery's own on_failure unwraps it
            exc = exc.exc
        if isinstance(exc, WorkerLostError):
            self._note_loss(exception_line(exc))
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )

    def on_timeout(self, soft: bool, timeout: float) -> Any:
        if not soft:  # the pool process is killed; a soft limit only raises in it
            self._note_loss(f"Celery's hard time limit of {timeout} s")
        return super().on_timeout(soft, timeout)

    def _note_loss(self, reason: str) -> None:
        # Only a prefork pool has processes to lose: elsewhere `worker_pid` is this
        # process's (threads) or a greenlet's id, and cannot tell who held the host.
        target = task_target(self.args) if _prefork else None
        if target is not None:
            LOSSES.add(target[0])
            args = (*target, str(self.hostname), reason, self.worker_pid)
            threading.Thread(target=_record_loss, args=args, daemon=True).start()


def _record_loss(
    run_id: str, host: str, address: str, worker: str, reason: str, pid: int | None
) -> None:
    try:
        status = record_pool_loss(
            worker_store(), run_id, host, address, worker=worker, reason=reason, pid=pid
        )
        if status is not None:
            log.warning(
                "run %s: %s recorded %s: the pool process that had taken it died",
                run_id,
                host,
                status.value,
            )
    except FleetError as exc:  # the store down: the host ends `lost` at the deadline
        log.warning("run %s: %s not recorded lost: %s", run_id, host, exc)
