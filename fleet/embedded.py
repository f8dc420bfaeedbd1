"""Embedded mode: a Celery worker thread in the submitting process, on the in-memory
transport, serving one session's runs with that session's settings and store.

Same tasks, same canvas as a distributed run; no broker, no other process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.worker import WorkController

from fleet.celery import app_for
from fleet.settings import Settings
from fleet.store.protocol import RunStore
from fleet.worker import attach

STOP_JOIN_S = 0.2


class _EmbeddedWorkController(WorkController):  # type: ignore[misc]
    fleet_embedded = True  # fleet.worker's start checks spare it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.started = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.started.set()


@contextmanager
def embedded_worker(
    settings: Settings, store: RunStore, concurrency: int = 16, timeout: float = 20.0
) -> Iterator[None]:
    """Run a worker thread in this process on the in-memory transport while inside."""
    from celery.app.trace import setup_worker_optimizations

    from fleet.ssh import configure_default_pool, configure_handshake_limiter
    from fleet.ssh.handshakes import shared_limiter

    attach(settings, store)
    configure_default_pool(settings.pool_size, settings.pool_idle_ttl)
    # Shared through the history file with any other embedded run on this machine.
    configure_handshake_limiter(shared_limiter(store, settings.handshakes_per_target))
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
