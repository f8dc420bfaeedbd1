"""The Celery app (``celery -A fleet worker`` finds it here, as the Celery docs teach).

Distributed mode: ``FLEET_BROKER_URL`` (Redis or RabbitMQ) and ``FLEET_RESULT_BACKEND``
(Redis; defaults to the broker URL when that is Redis). Embedded mode (no broker URL):
Celery's in-memory transport and an in-process worker thread, same tasks, same canvas.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from celery.utils.log import get_logger
from celery.worker import WorkController

from fleet import celery_config
from fleet.errors import ConfigError
from fleet.settings import Settings
from fleet.store import open_store
from fleet.store.protocol import RunStore

EMBEDDED_BROKER = "memory://"
EMBEDDED_BACKEND = "cache+memory://"
EMBEDDED_POLL_S = 0.01
STOP_JOIN_S = 0.2


log = get_logger(__name__)

#: Site settings not taken by each app (`celery_config.resolve`), said at worker start.
_refused: dict[int, list[celery_config.RefusedSetting]] = {}


def create_app(settings: Settings | None = None) -> Celery:
    """The Celery app for `settings`: fleet's safety settings, then the site's
    ``celeryconfig`` (see `fleet.celery_config`), then the broker and backend URLs.

    Raises `ConfigError` when the site module cannot be loaded.
    """
    settings = settings or Settings.load()
    celery_app = Celery("fleet", include=["fleet.tasks"])
    config, refused = celery_config.resolve(
        celery_config.load_site_settings(),
        result_expires=settings.retention,
        transport=celery_config.transport_of(settings.broker_url),
    )
    celery_app.conf.update(config)
    _refused[id(celery_app)] = refused
    if settings.is_embedded:
        celery_app.conf.broker_url = EMBEDDED_BROKER
        celery_app.conf.result_backend = EMBEDDED_BACKEND
        # The in-memory transport polls its queues (1 s by default): poll often, since
        # the queue lives in this process and one run's latency is the whole wait.
        celery_app.conf.broker_transport_options = {"polling_interval": EMBEDDED_POLL_S}
    else:
        celery_app.conf.broker_url = settings.broker_url
        celery_app.conf.result_backend = settings.result_backend
    return celery_app


app = create_app()


@worker_init.connect  # type: ignore[untyped-decorator]
def _check_worker_start(sender: Any = None, **_: Any) -> None:
    # A `celery worker` without a broker URL would consume a queue in its own memory
    # that no `fleet run` can reach. fleet's in-process worker is the exception.
    if isinstance(sender, _EmbeddedWorkController):
        return
    settings = worker_settings()
    if settings.is_embedded:
        raise SystemExit(
            "fleet: no broker configured: set FLEET_BROKER_URL (e.g. redis://host:6379/0) "
            "to run a worker"
        )
    try:
        settings.require_result_backend()
    except ConfigError as exc:
        raise SystemExit(f"fleet: {exc}") from None


@worker_ready.connect  # type: ignore[untyped-decorator]
def _say_weakened_settings(sender: Any = None, **_: Any) -> None:
    # At ready, not init: the worker's logging is set up by then, so the line lands in
    # its log beside the banner.
    worker = getattr(sender, "controller", sender)
    refused = _refused.get(id(getattr(sender, "app", None)), [])
    if refused:
        log.warning(celery_config.refusal_line(refused))
    multiplier = getattr(worker, "prefetch_multiplier", 1)
    if multiplier != 1:  # an explicit --prefetch-multiplier: taken, but not silently
        log.warning(
            "fleet: --prefetch-multiplier %s: each busy slot may hold %s other hosts' "
            "messages while other workers sit idle (fleet's setting is 1)",
            multiplier,
            multiplier - 1,
        )


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _configure_child(**_: Any) -> None:
    # A prefork child: its own SSH pool, sized from the settings (nothing crosses a fork).
    from fleet.ssh import configure_default_pool

    settings = worker_settings()
    configure_default_pool(settings.pool_size, settings.pool_idle_ttl)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _warm_up(**_: Any) -> None:
    # Open the store and load the SSH layer before the first task, not inside it: a cold
    # worker's first tasks otherwise all pay for imports and connections at once.
    store = worker_store()
    from fleet.ssh import configure_default_pool

    settings = Settings.load()
    configure_default_pool(settings.pool_size, settings.pool_idle_ttl)
    if not settings.is_embedded:  # an embedded run is followed by its own process
        from fleet.watchdog import Watchdog

        Watchdog(store, settings.watchdog_interval).start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _close_connections(**_: Any) -> None:
    from fleet.ssh import close_default_pool

    close_default_pool()


_apps_lock = threading.Lock()
_apps: dict[tuple[str, str], Celery] = {}


def _transport(settings: Settings) -> tuple[str, str]:
    if settings.is_embedded:
        return (EMBEDDED_BROKER, EMBEDDED_BACKEND)
    return (settings.broker_url or "", settings.result_backend or "")


def app_for(settings: Settings) -> Celery:
    """The app for `settings`: the module's app when they agree with the environment it
    was built from (the CLI, a worker), else one built for them (the Python API)."""
    key = _transport(settings)
    if key == (str(app.conf.broker_url), str(app.conf.result_backend)):
        return app
    with _apps_lock:
        if key not in _apps:
            _apps[key] = create_app(settings)
        return _apps[key]


_store_lock = threading.Lock()
_store: tuple[int, RunStore] | None = None


@functools.cache
def worker_settings() -> Settings:
    """This worker's own settings (its environment), resolved once."""
    return Settings.load()


def worker_store() -> RunStore:
    """The run store of this worker process, opened once (and again after a fork)."""
    global _store
    with _store_lock:
        if _store is None or _store[0] != os.getpid():
            _store = (os.getpid(), open_store(Settings.load()))
        return _store[1]


def use_store(store: RunStore) -> None:
    """Make tasks in this process use `store` (embedded mode shares the CLI's store)."""
    global _store
    with _store_lock:
        _store = (os.getpid(), store)


class _EmbeddedWorkController(WorkController):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.started = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.started.set()


@contextmanager
def embedded_worker(
    settings: Settings, concurrency: int = 16, timeout: float = 20.0
) -> Iterator[None]:
    """Run a worker thread in this process on the in-memory transport, for one run."""
    from celery.app.trace import setup_worker_optimizations

    app = app_for(settings)

    hostname = f"embedded@{os.uname().nodename}"
    # What `celery worker` does at start: without it the threads pool traces tasks
    # with the machine's bare host name, and results name the worker "vm", not its node.
    setup_worker_optimizations(app, hostname)
    worker = _EmbeddedWorkController(
        app=app,
        concurrency=concurrency,
        pool="threads",
        hostname=hostname,
        loglevel="ERROR",
        ready_callback=None,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    thread = threading.Thread(target=worker.start, name="fleet-embedded-worker", daemon=True)
    thread.start()
    worker.started.wait(timeout)
    try:
        yield
    finally:
        worker.stop(in_sighandler=False)
        # The consumer notices the stop at its next poll of the in-memory queue (up to
        # 2 s); it holds no work by now, so a short join is enough and the daemon
        # thread ends on its own or with the process.
        thread.join(STOP_JOIN_S)
