"""Publishing a canvas in a few broker round trips instead of one per message.

Celery sends a chord's header one message at a time, each an ``LPUSH`` and its reply,
so a 2,000-host run waits for 2,000 round trips before the last host can start, while
the workers already load Redis. kombu 5.7's `Producer.batch()` buffers publishes in a
Redis pipeline, but `chord.apply_async` does not pass a producer on to its header
(Celery 5.7, ``_chord.apply_async``), so `FleetCelery.producer_or_acquire` (a public
Celery method) hands the batching producer to whatever publishes inside `publish`.
Transports without batching (RabbitMQ, the in-memory one) publish each message at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

from celery import Celery
from celery.app.backends import by_url

#: Messages buffered before a pipeline is sent. A few per flush let the first workers
#: start while the rest is still being built; one per message is Celery's default.
#: Counted in broker commands (kombu's `max_size`): an LPUSH each, plus any PEXPIRE.
FLUSH_EVERY = 100

REDIS_BACKEND_MODULE = "celery.backends.redis"

#: After a broker failure mid-publish, the canvas is sent again, whole, until this many
#: seconds have passed (time for a broker to restart), pausing `RESEND_PAUSE_S` between
#: tries. One try against a broker address that does not answer lasts up to the connect
#: timeout (``broker_connection_timeout``, 3 s) on top. A retry policy for Celery's own
#: publish would not do: kombu applies it to an open connection, while a producer that
#: must connect first gives up after the connect timeout (``Connection.default_channel``).
RESEND_WINDOW_S = 8.0
RESEND_PAUSE_S = 0.5

log = logging.getLogger(__name__)

_publishing: contextvars.ContextVar[Any] = contextvars.ContextVar("fleet_publishing")


class FleetCelery(Celery):  # type: ignore[misc]  # celery ships no type hints
    """Celery, with a producer that `publish` may have chosen for this context, and a
    Redis result backend that subscribes to no result while `publish` runs
    (`_submitter_backend`)."""

    def producer_or_acquire(self, producer: Any = None) -> Any:
        if producer is None:
            chosen = _publishing.get(None)
            # Another app keeps its own broker; None: no batching producer chosen.
            if chosen is not None and chosen[0] is self and chosen[1] is not None:
                return contextlib.nullcontext(chosen[1])
        return super().producer_or_acquire(producer)

    def _get_backend(self) -> Any:
        # Celery's own three lines (celery/app/base.py), with fleet's Redis backend in
        # place of Celery's: should Celery rename this method, the result is only the
        # old cost, never a wrong result.
        backend, url = by_url(self.backend_cls or self.conf.result_backend, self.loader)
        if getattr(backend, "__module__", "") == REDIS_BACKEND_MODULE:
            backend = _submitter_backend(backend)
        return backend(app=self, url=url)


def is_redis_backend(backend: Any) -> bool:
    """True for Celery's Redis result backend, fleet's subclass included. By module name,
    not isinstance: importing it imports redis-py, which embedded mode never needs."""
    return any(c.__module__ == REDIS_BACKEND_MODULE for c in type(backend).__mro__)


@functools.cache
def _submitter_backend(redis_backend: Any) -> Any:
    """Celery's Redis result backend, except inside `publish`: there Celery's group
    result would SUBSCRIBE to every member's result channel (and UNSUBSCRIBE at exit),
    a command each way per host, for results fleet never reads: a run is followed
    through the run store. Made on first use: embedded mode never imports redis-py."""

    def add_pending_result(
        self: Any, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        chosen = _publishing.get(None)
        if chosen is not None and chosen[0] is self.app:
            return result
        return redis_backend.add_pending_result(
            self, result, weak=weak, start_drainer=start_drainer
        )

    return type(
        "SubmitterRedisBackend", (redis_backend,), {"add_pending_result": add_pending_result}
    )


def publish(signature: Any, app: Any) -> Any:
    """``signature.apply_async()`` with its messages sent in pipelines of
    `FLUSH_EVERY` commands where the broker transport supports it (Redis). Returns what
    ``apply_async`` returns.

    A pipeline is sent once, never retried (kombu's ``BatchPublishError``: "delivery is
    uncertain"), so a broker failure mid-publish is met by sending the whole canvas
    again the way Celery sends it, one message at a time, and again until
    `RESEND_WINDOW_S` has passed. The signature is frozen first, so every sending
    carries the same task ids, and a message that got through twice is a copy: the
    host's claim refuses to run it again, and the copy neither counts in the chord nor
    frees the host's ``--fanout`` slot (`fleet.tasks.run_on_host`); Celery 5.7's Redis
    chord counts a task id once. Raises what the last sending raises (the broker still
    down: the caller cancels the run)."""
    with _publishing_for(app, None):  # frozen results subscribe to nothing either
        signature.freeze()
    errors = _broker_errors(app)
    try:
        with (
            app.producer_or_acquire() as producer,
            producer.batch(max_size=FLUSH_EVERY),
            _publishing_for(app, producer),
        ):
            return signature.apply_async()
    except errors as exc:
        log.warning(
            "fleet: broker failed mid-publish (%s: %s); sending again, one message at a time",
            type(exc).__name__,
            exc,
        )
    give_up = time.monotonic() + RESEND_WINDOW_S
    while True:
        try:
            with _publishing_for(app, None):
                return signature.apply_async()
        except errors:
            if time.monotonic() + RESEND_PAUSE_S > give_up:
                raise
            time.sleep(RESEND_PAUSE_S)


@contextlib.contextmanager
def _publishing_for(app: Any, producer: Any) -> Iterator[None]:
    """Inside: `app` subscribes to no result, and publishes with `producer` (None:
    Celery's own producer pool, one message at a time)."""
    token = _publishing.set((app, producer))
    try:
        yield
    finally:
        _publishing.reset(token)


def _broker_errors(app: Any) -> tuple[type[BaseException], ...]:
    """What a failed publish raises: kombu's, and the transport's connection errors."""
    from kombu import exceptions

    with app.connection_for_write() as conn:  # not connected: only its error classes
        transport_errors = tuple(conn.connection_errors) + tuple(conn.channel_errors)
    # kombu's Redis transport counts KeyError among its channel errors: here it would
    # only be a bug, which a second sending would hide.
    transport_errors = tuple(e for e in transport_errors if e is not KeyError)
    return (exceptions.BatchPublishError, exceptions.OperationalError, *transport_errors)
