"""Waking a worker's event loop when one of its slots frees.

With `worker_disable_prefetch` (Celery 5.6+, Redis) the worker asks the broker for a
message only while a slot is free, and it checks that each time its event loop wakes.
A pool thread finishing a task does not wake the loop by itself: the loop sleeps until
its next timer or socket event, and a host's message waits in the queue behind a worker
that has a free slot (fault matrix #19; Celery sends task events from pool threads
through ``hub.call_soon``, which is what used to wake it while they were on).

So: after each task, the finishing thread asks the loop to wake (``hub.call_soon``,
which kombu 5.7 makes wake a sleeping loop at once), and a timer every `FALLBACK_S`
covers what that misses: a thread that wakes the loop a moment before Celery marks its
slot free, and kombu releases whose ``call_soon`` does not wake. The timer is a consumer
bootstep, so it is set again whenever the consumer restarts after a broker reconnect
(Celery 5.6 clears the loop's timers then).
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.signals import task_postrun

#: Seconds between the loop's fallback wake-ups (an idle worker pays ~0.3 ms each).
FALLBACK_S = 0.1

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
def _after_task(**_: Any) -> None:
    hub = _hub
    if hub is not None:
        hub.call_soon(_nothing)


def _nothing() -> None:
    """Waking the loop is the point: it then asks for a message if a slot is free."""
