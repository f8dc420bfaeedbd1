"""A worker's liveness: a beat in the run store every `BEAT_S` seconds, from the worker's
start until its end, so that the hosts a dead worker held can be told from hosts still
running (`fleet.orphans`).

Separate from the host-affinity registration (`fleet.affinity.Heartbeat`): that one
ends as soon as a warm shutdown begins (no new host is routed here), while the worker
still runs its hosts to their end; this one ends when the worker process does:
Celery's ``worker_shutdown`` comes after a warm shutdown's running tasks are done, so
the process then holds no host and its liveness is dropped. After a cold shutdown
(whose cancelled tasks' hosts are still claimed) it is kept; like a worker killed
outright, frozen or cut off from Redis, the process stops beating and counts as dead
`ttl_s` seconds (``FLEET_WORKER_DEAD_AFTER``) after its last beat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fleet.store.protocol import RunStore

#: Seconds between beats, at most: four beats or more per `FLEET_WORKER_DEAD_AFTER`
#: (default 15 s), so a busy machine or a Redis failover that delays one or two does not
#: make a live worker look dead.
BEAT_S = 2.0

log = logging.getLogger(__name__)


class Liveness:
    """A daemon thread beating for the worker `worker` (its Celery node name): alive for
    `ttl_s` seconds after each beat.

    `judging()` says whether this worker may declare others dead: only once its own
    beats have gone through for `ttl_s` without a failure or a gap, and the last one
    lately, and not once its shutdown began (`leave`). Right after the store came back
    from an outage, every worker's last beat is old; the live ones beat again within a
    beat interval, and a worker that waits a full TTL sees them do it first. A gap in
    its own beats, on this machine's clock or the store's (this process stopped, its
    machine paused or starved, the store's clock stepped) may have struck the others
    too: it waits a TTL again. (`RunStore.dead_workers` checks its last beat once more
    on the store's clock, and the watchdog confirms a death over two sweeps.)
    """

    def __init__(
        self,
        store: RunStore,
        worker: str,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.worker = worker
        self.ttl_s = ttl_s
        self.beat_s = min(BEAT_S, ttl_s / 4)
        self._clock = clock
        self._healthy_since: float | None = None
        self._last_beat: float | None = None
        self._last_store_time: float | None = None
        self._leaving = False
        self._forget = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleet-liveness", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        """One beat; a failure is logged and makes this worker no judge for a while."""
        try:
            store_time = self._store.beat_alive(self.worker, self.ttl_s)
        except Exception as exc:  # the store down: the next beat tries again
            if self._healthy_since is not None:
                log.warning("fleet: liveness beat failed: %s: %s", type(exc).__name__, exc)
            self._healthy_since = None
            return
        now = self._clock()
        gap = self._gap(now, self._last_beat) or self._gap(store_time, self._last_store_time)
        if self._healthy_since is None or gap:
            self._healthy_since = now
        self._last_beat, self._last_store_time = now, store_time

    def _gap(self, now: float, last: float | None) -> bool:
        return last is not None and not 0 <= now - last <= self.ttl_s / 2

    def judging(self) -> bool:
        since, last, now = self._healthy_since, self._last_beat, self._clock()
        if since is None or last is None or self._leaving:
            return False
        return now - since >= self.ttl_s and now - last <= self.ttl_s / 2

    def leave(self) -> None:
        """Judge no more: the worker's shutdown began (Celery's signal handler calls
        this, so it only sets a flag), and it may no longer serve the queue a resumed
        batch would go to. It beats on until `stop`."""
        self._leaving = True

    def stop(self, *, forget: bool = True) -> None:
        """Stop beating; with `forget`, drop this process's liveness: called at Celery's
        ``worker_shutdown``, when a warm shutdown's tasks are done and it holds no host.
        Without (a cold shutdown, whose abandoned hosts are still claimed), its time
        alive runs out, and the others find those hosts orphaned."""
        self._leaving = True
        self._forget = forget
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.beat_s * 2)
        if forget:
            self._forget_alive()

    def _forget_alive(self) -> None:
        try:
            self._store.forget_alive(self.worker)
        except Exception as exc:
            log.warning("fleet: liveness not ended: %s: %s", type(exc).__name__, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.beat_s):
            self.beat()
            if self._stop.is_set() and self._forget:
                # A beat that outlasted `stop`'s wait landed after its forgetting.
                self._forget_alive()
