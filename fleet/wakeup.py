"""Waking a worker's event loop when one of its slots frees.

With `worker_disable_prefetch` (Celery 5.6+, Redis) the worker asks the broker for a
message only while a slot is free, and it checks that each time its event loop wakes.
A pool thread finishing a task does not wake the loop by itself: the loop sleeps until
its next timer or socket event, and a host's message waits in the queue behind a worker
that has a free slot (fault matrix #19; Celery sends task events from pool threads
through ``hub.call_soon``, which is what used to wake it while they were on).

So: after each task, the finishing thread asks the loop to wake (``hub.call_soon``,
which kombu 5.7 makes wake a sleeping loop at once); the loop looks again every
millisecond while the task still holds its slot (`_when_free`); and a timer every
`FALLBACK_S` covers kombu releases whose ``call_soon`` does not wake. The timer is a consumer
bootstep, so it is set again whenever the consumer restarts after a broker reconnect
(Celery 5.6 clears the loop's timers then).
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.signals import task_postrun
from celery.worker import state

#: Seconds between the loop's fallback wake-ups (an idle worker pays ~0.3 ms each).
FALLBACK_S = 0.1
#: While the finished task still holds its slot, the loop looks again this often
#: (seconds), at most `RECHECK_TRIES` times, then leaves it to the fallback timer.
RECHECK_S = 0.001
RECHECK_TRIES = 20

_hub: Any = None  # the consumer's event loop, once its bootstep started


class WakeOnFreeSlot(bootsteps.StartStopStep):  # type: ignore[misc]  # celery: untyped
    """A consumer bootstep: the fallback timer, and the loop that `_after_task` wakes."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer_entry: Any = None

    def start(self, parent: Any) -> None:
        global _hub
        self.stop(parent)
        _hub = getattr(parent, "hub", None)
        timer = getattr(parent, "timer", None)
        if timer is not None and hasattr(timer, "call_repeatedly"):
            self._timer_entry = timer.call_repeatedly(FALLBACK_S, _nothing)

    def stop(self, parent: Any) -> None:
        global _hub
        _hub = None
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)


@task_postrun.connect  # type: ignore[untyped-decorator]
def _after_task(task_id: str | None = None, **_: Any) -> None:
    hub = _hub
    if hub is not None:
        hub.call_soon(_when_free, task_id, 0)


def _when_free(task_id: str | None, tries: int) -> None:
    """On the loop's thread, where anything raised ends the worker. Celery sends
    `task_postrun` a moment before it marks the slot free (``task_ready``, in the same
    pool thread); the loop woken in between sees no free slot and would sleep until the
    fallback timer. Look again shortly instead; once the slot is free the loop asks the
    broker for a message as it goes on."""
    hub = _hub
    if hub is None or tries >= RECHECK_TRIES:
        return
    # `state.requests` (task id -> request) is a dict, read here in one lookup: pool
    # threads change Celery's records while the loop runs, and iterating its
    # `reserved_requests` WeakSet then raised "Set changed size during iteration",
    # which ended the worker. Celery drops the id there first (``task_ready``): the few
    # instructions before the slot's record goes too are left to the fallback timer.
    if task_id is not None and task_id in state.requests:
        hub.call_later(RECHECK_S, _when_free, task_id, tries + 1)


def _nothing() -> None:
    """Waking the loop is the point: it then asks for a message if a slot is free."""
