"""Deadlines for SSH requests, served by one thread per process.

`threading.Timer` starts an OS thread per timer: about 175 us of CPU for every command
fleet starts (measured on the bench machine, bench/README.md), for a deadline that
almost never fires. Here one daemon thread keeps every pending deadline in a heap.

Kept here rather than taken from a library: the standard library has no shared timer
(`sched` cannot be added to from other threads while it runs), and the timers of
Celery and kombu are not for the framework-free SSH layer (fleet's import contracts).

A callback runs on the timer thread and must return at once: anything slow (closing a
channel, waking a waiter) belongs in a thread of its own, started by the callback.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Cancelled deadlines are dropped from the heap when they reach its top, or all at
#: once when they outnumber the live ones and exceed this count.
_COMPACT_OVER = 1024


class Deadline:
    """A pending call, made by `call_later`. `cancel()` is safe from any thread, also
    after the call was made (it then does nothing)."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        # Unlocked check-then-set: two threads cancelling at once count it twice, which
        # only brings a compaction forward.
        if not self.cancelled:
            self.cancelled = True
            _timers.cancelled()


class _Timers:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also the state of a forked child: the parent's thread did not come along.
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._cancelled = 0
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, callback: Callable[[], object]) -> Deadline:
        entry = Deadline(time.monotonic() + max(delay, 0.0), callback)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                # Started here, not at import; started again should it ever have died.
                # A failed start raises to the caller (no deadline is promised then).
                thread = threading.Thread(target=self._run, name="fleet-deadlines", daemon=True)
                thread.start()
                self._thread = thread
            heapq.heappush(self._heap, (entry.when, next(self._order), entry))
            if self._heap[0][2] is entry:
                self._cond.notify()
        return entry

    def cancelled(self) -> None:
        with self._cond:
            self._cancelled += 1
            if self._cancelled > _COMPACT_OVER and self._cancelled * 2 > len(self._heap):
                self._heap = [item for item in self._heap if not item[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _next_due(self) -> Deadline:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                    self._cancelled = max(0, self._cancelled - 1)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._heap)[2]
                self._cond.wait(wait)

    def _run(self) -> None:
        while True:
            entry = self._next_due()
            if entry.cancelled:  # cancelled between the pop and here
                continue
            entry.cancelled = True  # a later cancel() is a no-op, and not counted
            try:
                entry.callback()
            except BaseException:  # even SystemExit: every deadline here needs this thread
                log.exception("fleet: a deadline callback failed")


_timers = _Timers()
os.register_at_fork(after_in_child=_timers._reset)


def call_later(delay: float, callback: Callable[[], object]) -> Deadline:
    """Call `callback()` on the deadline thread `delay` seconds from now (monotonic
    clock), unless the returned `Deadline` is cancelled first. The callback must not
    block (see the module docstring); an exception it raises is logged, not raised."""
    return _timers.call_later(delay, callback)
