"""Host affinity: each host's task goes to the worker that holds its SSH connection.

Every worker process keeps its own connection pool (`fleet.ssh.pool`), so a warm run
reuses a connection only when the host lands on the worker that opened it. Here:

- each distributed worker also consumes a **personal queue** per plain queue it serves,
  ``fleet.w.<queue>/<node name>`` (`personal_queue`), and registers each, with a
  heartbeat, under its plain queue in the run store (`RunStore.register_worker`: a
  sorted set per queue, scored by the store's own clock). One per plain queue, not one
  per worker: a message waiting in a personal queue then always belongs to that plain
  queue, so failover puts it back where it came from (a worker of ``-Q web,dc2`` that
  dies must not hand dc2's hosts to a worker of ``web`` in another datacenter);
- the submitter (`routes`, called by `fleet.canvas.build_canvas`'s callers) maps each
  host to one of the live workers serving the host's queue by **rendezvous hashing**
  (highest-random-weight, `choose`): stable while the set of workers is, and when a
  worker goes or comes only its share of the hosts moves;
- only with ``FLEET_HOST_AFFINITY=1`` (submitters, and workers, which publish later
  batches): a host hashed to a busy worker waits for it while another worker may idle,
  the price of reusing its connection; by default every host goes to its plain queue;
- a queue with fewer than two live workers is used as before (one worker gets every
  host anyway), so are the embedded mode and a store without registrations;
- **failover**: a worker gone before the run (no heartbeat for `FRESH_S`) gets no
  hosts. A worker that dies holding messages in its personal queue: the other workers
  serving the same queue move those messages back to the plain queue once its
  registration has expired (`TTL_S`, `Heartbeat.reclaim`), where any worker takes them;
  the claims (`fleet.lifecycle.run_host_job`) keep each host at most once, and a
  message moved after the run's deadline has expired and is dropped (the host ends
  `lost`, as without affinity). A worker that stops expires its registration
  (`RunStore.retire_worker`), so the others reclaim its queues within a heartbeat: a
  warm shutdown (SIGTERM) as it begins (`worker_shutting_down`); Celery's shutdown
  after an unrecoverable error only once its running tasks are done (Celery sends
  `worker_shutdown` then, and no `worker_shutting_down`), and until then submitters
  may still route to it. A registration simply dropped would leave the messages still
  waiting there behind, until the run's deadline.

The message moved keeps its body, headers and signature (`fleet.signing`): it is the
same task message on another queue.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleet.errors import FleetError
from fleet.inventory.hosts import DEFAULT_QUEUE, Host
from fleet.store.protocol import RunStore

PERSONAL_PREFIX = "fleet.w."
#: Seconds between a worker's heartbeats.
HEARTBEAT_S = 2.0
#: A registration lives this long after its last heartbeat; then its queue is reclaimed.
TTL_S = 10.0
#: The submitter routes only to workers heard from in the last FRESH_S seconds, so a
#: registration it picks still has TTL_S - FRESH_S seconds before it can be reclaimed:
#: time enough to publish. (A message published after the reclaim is moved on the
#: next one: a reclaimed queue is looked at for `REAP_AFTER_S`.)
FRESH_S = 5.0
#: An expired registration is kept (and its queue reclaimed) this long, then dropped.
REAP_AFTER_S = 120.0
#: Seconds a stopping worker waits for its heartbeat thread to expire its registration.
STOP_WAIT_S = 5.0

log = logging.getLogger(__name__)


def personal_queue(node: str, queue: str) -> str:
    """The personal queue of the worker named `node` (Celery's ``name@host``) for the
    plain queue `queue`: ``fleet.w.<queue>/<node>`` (a name, never parsed back)."""
    return f"{PERSONAL_PREFIX}{queue}/{node}"


def choose(host: str, workers: Sequence[str]) -> str:
    """The worker of `workers` (personal queues, non-empty) that `host` goes to:
    rendezvous hashing (the highest BLAKE2b of worker and host wins)."""

    def weight(worker: str) -> bytes:
        return hashlib.blake2b(f"{worker}\0{host}".encode(), digest_size=8).digest()

    return max(workers, key=weight)


def routes(
    store: RunStore, hosts: Iterable[Host], *, embedded: bool, enabled: bool
) -> dict[str, str]:
    """Host name -> personal queue, for the hosts whose queue has two or more live
    workers; other hosts are absent (they go to their plain queue). Never raises: a
    store that cannot say means no affinity (the run itself will meet the error).

    Only when `enabled` (``FLEET_HOST_AFFINITY``): a host routed to a worker waits for
    that worker even when another is idle, so one slow host can hold up the hosts
    hashed behind it on a busy worker. Off by default: no host waits behind a busy slot.
    """
    if embedded or not enabled:
        return {}
    by_queue: dict[str, list[str]] = {}
    for host in hosts:
        by_queue.setdefault(host.queue or DEFAULT_QUEUE, []).append(host.name)
    try:
        live = store.live_workers(sorted(by_queue), TTL_S - FRESH_S)
    except FleetError as exc:
        log.warning("host affinity off for this run: %s", exc)
        return {}
    out: dict[str, str] = {}
    for queue, names in by_queue.items():
        workers = sorted(live.get(queue, ()))
        if len(workers) < 2:
            continue
        for name in names:
            out[name] = choose(name, workers)
    return out


class Heartbeat:
    """A worker's registration: a daemon thread refreshing it every `HEARTBEAT_S` and
    reclaiming the personal queues of workers that stopped (`reclaim`).

    `personals`: plain queue -> this worker's personal queue for it (`personal_queue`);
    `app`: the Celery app (its broker connection moves reclaimed messages)."""

    def __init__(self, store: RunStore, app: Any, personals: Mapping[str, str]) -> None:
        self._store = store
        self._app = app
        self.personals = dict(personals)
        self.queues = tuple(self.personals)
        self._stop = threading.Event()
        self._retired = threading.Event()
        # A beat and the retiring never interleave: a beat landing after the retiring
        # would make a stopped worker live again for TTL_S.
        self._registration = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="fleet-affinity", daemon=True)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def leave(self) -> None:
        """Stop beating; the heartbeat thread expires the registration on its way out.
        Called from Celery's signal handler when a warm shutdown begins, so that no run
        is routed here while the worker finishes its tasks: it only sets an event, once
        (``Event.set`` takes a lock a second signal must not wait for)."""
        if not self._stop.is_set():
            self._stop.set()

    def stop(self, timeout_s: float = STOP_WAIT_S) -> None:
        """`leave`, and wait up to `timeout_s` seconds for the registration to be
        expired (expiring it here if the thread never ran or is stuck): no more hosts
        are routed here, and the other workers move what still waits in the personal
        queue."""
        self.leave()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if not self._retired.is_set():
            self._retire()

    def _retire(self) -> None:
        with self._registration:
            try:
                self._store.retire_worker(self.personals)
                self._retired.set()
            except FleetError as exc:
                log.warning("fleet: affinity: registration not expired: %s", exc)

    def _beat(self) -> None:
        with self._registration:
            if not self._stop.is_set():
                self._store.register_worker(self.personals, TTL_S)

    def _loop(self) -> None:
        try:
            self._beat_until_stopped()
        finally:
            # Here, not in `stop`: a beat still under way would register it again.
            self._retire()

    def _beat_until_stopped(self) -> None:
        own = set(self.personals.values())
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
                for queue, orphans in self._store.expired_workers(
                    self.queues, REAP_AFTER_S
                ).items():
                    for orphan in orphans:
                        if orphan not in own:
                            self.reclaim(orphan, queue)
            except Exception as exc:  # the store or broker down: try again next beat
                log.warning("fleet: affinity heartbeat: %s: %s", type(exc).__name__, exc)

    def reclaim(self, orphan: str, queue: str) -> int:
        """Move every message of the personal queue `orphan` to the plain `queue`, body,
        headers and properties unchanged; returns how many were moved."""
        return move_messages(self._app, orphan, queue)


def move_messages(app: Any, source: str, target: str) -> int:
    """Move the messages waiting in queue `source` to queue `target` through the broker
    (kombu): each is published to `target` as it was, then acked on `source`."""
    moved = 0
    queues = app.amqp.queues
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        bound = queues[source].bind(channel)
        destination = queues[target]
        with app.producer_or_acquire() as producer:
            while True:
                message = bound.get(no_ack=False, accept=None)
                if message is None:
                    return moved
                props = message.properties
                producer.publish(
                    message.body,
                    exchange=destination.exchange,
                    routing_key=destination.routing_key,
                    declare=[destination],
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    headers=message.headers,
                    correlation_id=props.get("correlation_id"),
                    reply_to=props.get("reply_to"),
                    priority=props.get("priority"),
                    retry=True,
                )
                message.ack()
                moved += 1


def served_queues(consume_from: Mapping[str, Any]) -> list[str]:
    """The plain queues a worker consumes (its -Q), without any personal queue."""
    return sorted(q for q in consume_from if not q.startswith(PERSONAL_PREFIX))
