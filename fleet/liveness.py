"""A worker's liveness: a beat in the run store every `BEAT_S` seconds, from the worker's
start until its end, so that the hosts a dead worker held can be told from hosts still
running (`fleet.orphans`).

Separate from the host-affinity registration (`fleet.affinity.Heartbeat`): that one
ends as soon as a warm shutdown begins (no new host is routed here), while the worker
still runs its hosts to their end; this one ends when the worker process does
(Celery's ``worker_shutdown``: after a warm shutdown's running tasks are done, and at
once on a cold shutdown, whose abandoned hosts are then found orphaned at the next
sweep). A worker killed outright, frozen or cut off from Redis stops beating; it counts
as dead `ttl_s` seconds (``FLEET_WORKER_DEAD_AFTER``) after its last beat.
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
    lately. Right after the store came back from an outage, every worker's last beat is
    old; the live ones beat again within a beat interval, and a worker that waits a
    full TTL sees them do it first. A gap in its own beats (this process stopped, its
    machine paused or starved) may have struck the others too: it waits a TTL again.
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleet-liveness", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        """One beat; a failure is logged and makes this worker no judge for a while."""
        try:
            self._store.beat_alive(self.worker, self.ttl_s)
        except Exception as exc:  # the store down: the next beat tries again
            if self._healthy_since is not None:
                log.warning("fleet: liveness beat failed: %s: %s", type(exc).__name__, exc)
            self._healthy_since = None
            return
        now = self._clock()
        gap = self._last_beat is not None and now - self._last_beat > self.ttl_s / 2
        if self._healthy_since is None or gap:
            self._healthy_since = now
        self._last_beat = now

    def judging(self) -> bool:
        since, last, now = self._healthy_since, self._last_beat, self._clock()
        if since is None or last is None:
            return False
        return now - since >= self.ttl_s and now - last <= self.ttl_s / 2

    def stop(self) -> None:
        """Stop beating and say so: this worker runs nothing any more, so a host it
        still held (a cold shutdown) is orphaned at once, not `ttl_s` later."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.beat_s * 2)
        try:
            self._store.beat_alive(self.worker, 0.0)
        except Exception as exc:
            log.warning("fleet: liveness not ended: %s: %s", type(exc).__name__, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.beat_s):
            self.beat()
