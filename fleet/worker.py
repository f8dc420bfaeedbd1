"""A worker process's own side: its settings, its store, its files, its start and stop.

What a worker trusts is configured once, when it starts, from its own environment
(`worker_settings`): the run store it writes to, its known_hosts and ssh config
(`exec_options` puts them under every task's options; a task message never carries a
path of the submitter's machine), its SSH pool and its watchdog. fleet's in-process
worker (`fleet.embedded`) attaches the submitting session's settings and store instead.

The Celery signal handlers below are connected when `fleet.celery` is imported, so a
worker started as ``celery -A fleet worker`` runs them; they hold no other logic.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery.signals import (
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from celery.utils.log import get_logger

from fleet import celery_config, pool_loss, signing
from fleet.command import ExecOptions
from fleet.errors import ConfigError, FleetError
from fleet.execute import execute
from fleet.inventory.hosts import DEFAULT_QUEUE, Host
from fleet.pinning import pinned_host
from fleet.results import HostResult
from fleet.runenv import env_from_refusal, resolve_env_from
from fleet.settings import Settings
from fleet.store import open_store
from fleet.store.protocol import RunStore
from fleet.task_names import AGGREGATE
from fleet.trust import allowed_options, refusal, refused_result

log = get_logger(__name__)

_lock = threading.Lock()
_attached: Settings | None = None
_store: tuple[int, RunStore] | None = None


def worker_settings() -> Settings:
    """This worker's settings: its environment, resolved once (or the embedded session's)."""
    return _attached if _attached is not None else _environment_settings()


@functools.cache
def _environment_settings() -> Settings:
    return Settings.load()


def worker_store() -> RunStore:
    """The run store of this worker process, opened once (and again after a fork)."""
    global _store
    with _lock:
        if _store is None or _store[0] != os.getpid():
            _store = (os.getpid(), open_store(worker_settings()))
        return _store[1]


def attach(settings: Settings, store: RunStore) -> None:
    """Serve tasks in this process with `settings` and `store` (the embedded worker)."""
    global _attached, _store
    with _lock:
        _attached = settings
        _store = (os.getpid(), store)


def exec_options(message: dict[str, Any]) -> ExecOptions:
    """A task message's options with this worker's own known_hosts and ssh config, and
    only as lax as the worker allows (`fleet.trust`)."""
    settings = worker_settings()
    options = ExecOptions.from_dict(message).with_machine_files(_machine_files(settings))
    return allowed_options(options, settings)


def execute_allowed(host: Host, command: str, options: ExecOptions) -> HostResult:
    """`fleet.execute.execute`, for the hosts this worker allows; a refused host gets
    its reason as an `error` result and is never contacted (`fleet.trust.refusal`,
    `fleet.runenv.env_from_refusal`); `env_from` references are resolved here."""
    allowed = _allowed(host, options)
    if isinstance(allowed, HostResult):
        return allowed
    return execute(allowed[0], command, allowed[1])


def _allowed(host: Host, options: ExecOptions) -> tuple[Host, ExecOptions] | HostResult:
    """The host as this worker knows it (`fleet.pinning`) and `options` with `env_from`
    resolved, or the refusal of a host this worker does not allow (`fleet.trust.refusal`,
    `fleet.runenv.env_from_refusal`)."""
    settings = worker_settings()
    pinned = pinned_host(host, settings)
    if isinstance(pinned, str):
        return refused_result(host, pinned)
    reason = refusal(pinned, settings) or env_from_refusal(pinned, options, settings)
    if reason is not None:
        return refused_result(pinned, reason)
    resolved = resolve_env_from(pinned, options, os.environ)
    return resolved if isinstance(resolved, HostResult) else (pinned, resolved)


def action_executor(run_id: str, message: Any) -> Callable[[Host, str, ExecOptions], HostResult]:
    """The execute function of a script, copy or fetch (`fleet.transfer.run_action`) for
    `execute_allowed`'s hosts. `message` is untrusted: an action that does not check
    (`fleet.actions.Action.from_message`) is each host's `error`, and nothing is run."""
    from fleet.actions import Action
    from fleet.transfer import run_action

    def run(host: Host, _command: str, options: ExecOptions) -> HostResult:
        allowed = _allowed(host, options)
        if isinstance(allowed, HostResult):
            return allowed
        try:
            action = Action.from_message(message)
        except FleetError as exc:
            return refused_result(host, f"malformed action in the task message: {exc}")
        limit = worker_settings().transfer_limit
        return run_action(worker_store(), run_id, allowed[0], action, allowed[1], limit)

    return run


@functools.cache
def _machine_files(settings: Settings) -> ExecOptions:
    return ExecOptions.from_settings(settings)


def _is_embedded_worker(sender: Any) -> bool:
    return bool(getattr(sender, "fleet_embedded", False))


@worker_init.connect  # type: ignore[untyped-decorator]
def _check_worker_start(sender: Any = None, **_: Any) -> None:
    # A `celery worker` without a broker URL would consume a queue in its own memory
    # that no `fleet run` can reach. fleet's in-process worker is the exception.
    if _is_embedded_worker(sender):
        return
    settings = worker_settings()
    if settings.is_embedded:
        raise SystemExit(
            "fleet: no broker configured: set FLEET_BROKER_URL (e.g. redis://host:6379/0) "
            "to run a worker"
        )
    try:
        settings.require_result_backend()
        _check_signing(getattr(sender, "app", None))
    except ConfigError as exc:
        raise SystemExit(f"fleet: {exc}") from None
    # Refused messages (unsigned, unknown signer, changed body): one line each.
    signs = getattr(getattr(sender, "app", None), "fleet_signing", None) is not None
    logging.getLogger(signing.CONSUMER_LOGGER).addFilter(
        signing.RefusedMessageFilter(signing=signs)
    )


def _check_signing(celery_app: Any) -> None:
    error = getattr(celery_app, "fleet_config_error", None)
    if error is not None:
        raise error
    config = getattr(celery_app, "fleet_signing", None)
    if config is not None:
        signing.check_worker_signing(config)


def _signing_line(celery_app: Any) -> str:
    config = getattr(celery_app, "fleet_signing", None)
    if config is None:
        return (
            "fleet: message signing OFF: this worker runs any task message written to "
            "the broker (set FLEET_SIGNING_KEY, FLEET_SIGNING_CERT, "
            "FLEET_SIGNING_CERT_STORE; see fleet keys init)"
        )
    return (
        f"fleet: message signing ON: signing as CN={config.signer}; accepting only "
        f"messages signed by a certificate in {config.cert_store}"
    )


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _configure_child(**_: Any) -> None:
    # A prefork child: its own SSH pool, sized from the settings (nothing crosses a fork).
    _configure_pool(worker_settings())


@worker_ready.connect  # type: ignore[untyped-decorator]
def _at_ready(sender: Any = None, **_: Any) -> None:
    controller = getattr(sender, "controller", sender)
    if _is_embedded_worker(controller):
        return
    _say_weakened_settings(sender, controller)
    # Open the store and load the SSH layer before the first task, not inside it: a cold
    # worker's first tasks otherwise all pay for imports and connections at once.
    settings = worker_settings()
    store = worker_store()
    try:
        warning = store.check_server()
    except FleetError as exc:  # the store is down right now: the tasks will say so
        warning = f"run store not checked: {exc}"
    if warning:
        log.warning("fleet: %s", warning)
    _configure_pool(settings)
    _start_watchdog(sender, store, settings)
    _start_affinity(sender, store)


_heartbeat: Any = None
_liveness: Any = None
_cold = False


def _start_watchdog(consumer: Any, store: RunStore, settings: Settings) -> None:
    """The watchdog, and this worker's liveness beside it (`fleet.liveness`), under the
    node name its claims hold (a task's ``request.hostname``)."""
    global _liveness
    from fleet import affinity
    from fleet.liveness import Liveness
    from fleet.watchdog import Watchdog

    hostname = getattr(consumer, "hostname", None)
    app = getattr(consumer, "app", None)
    if not hostname or app is None:
        Watchdog(store, settings.watchdog_interval).start()
        return
    _liveness = Liveness(store, str(hostname), settings.worker_dead_after)
    _liveness.start()
    served = affinity.served_queues(app.amqp.queues.consume_from)

    def resume(run_id: str, batch: int, deadline: float) -> None:
        # The batch's chord callback, as its chord would have sent it, to a queue this
        # worker serves: any worker may continue a run (all it needs is in the store).
        app.send_task(
            AGGREGATE,
            args=([], run_id),
            kwargs={"batch": batch},
            queue=served[0] if served else DEFAULT_QUEUE,
            expires=datetime.fromtimestamp(deadline, UTC),
        )

    Watchdog(store, settings.watchdog_interval, _liveness, resume, pool_loss.LOSSES).start()


def _start_affinity(consumer: Any, store: RunStore) -> None:
    """Consume this worker's personal queue and register it (`fleet.affinity`)."""
    global _heartbeat
    from fleet import affinity

    hostname = getattr(consumer, "hostname", None)
    if not hostname or not hasattr(consumer, "add_task_queue"):
        return
    queues = affinity.served_queues(consumer.app.amqp.queues.consume_from)
    personals = {q: affinity.personal_queue(str(hostname), q) for q in queues}
    try:
        for personal in personals.values():
            consumer.add_task_queue(personal)
        _heartbeat = affinity.Heartbeat(store, consumer.app, personals)
        _heartbeat.start()
    except Exception as exc:  # no affinity is slower, not wrong: the plain queues serve
        log.warning("fleet: host affinity off on this worker: %s: %s", type(exc).__name__, exc)


def _configure_pool(settings: Settings) -> None:
    from fleet.ssh import configure_default_pool, configure_handshake_limiter
    from fleet.ssh.handshakes import shared_limiter

    _raise_fd_limit(settings.pool_size + FD_MARGIN)

    configure_default_pool(settings.pool_size, settings.pool_idle_ttl)
    # Handshakes per sshd counted with every other worker's, in the run store.
    configure_handshake_limiter(shared_limiter(worker_store(), settings.handshakes_per_target))


#: File descriptors a worker needs beside one socket per pooled transport (Redis,
#: channels' pipes, logs).
FD_MARGIN = 512


def _raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (never above the hard
    limit): a full pool is one socket per transport, and many systems start at 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("fleet: open-file limit stays %s: %s", soft, exc)


def _say_weakened_settings(consumer: Any, controller: Any) -> None:
    # At ready, not init: the worker's logging is set up by then, so the line lands in
    # its log beside the banner.
    celery_app = getattr(consumer, "app", None)
    log.info(_signing_line(celery_app))
    refused = getattr(celery_app, "fleet_refused_settings", [])
    if refused:
        log.warning(celery_config.refusal_line(refused))
    multiplier = getattr(controller, "prefetch_multiplier", 1)
    if multiplier != 1:  # an explicit --prefetch-multiplier: taken, but not silently
        log.warning(
            "fleet: --prefetch-multiplier %s: each busy slot may hold %s other hosts' "
            "messages while other workers sit idle (fleet's setting is 1)",
            multiplier,
            multiplier - 1,
        )


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _leave(how: str | None = None, **_: Any) -> None:
    # In Celery's signal handler, as the shutdown begins: a warm shutdown may wait long
    # for running tasks, and no run should be routed here meanwhile.
    global _cold
    _cold = _cold or how == "Cold"  # its running tasks are abandoned, their hosts claimed
    if _heartbeat is not None:
        _heartbeat.leave()
    if _liveness is not None:
        _liveness.leave()  # judge no more: this worker may stop serving its queues


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _close_connections(**_: Any) -> None:
    from fleet.ssh import close_default_pool

    if _heartbeat is not None:
        _heartbeat.stop()  # route no more hosts to this worker
    if _liveness is not None:
        # After the pool: a warm shutdown's tasks are done by now, and this worker holds
        # no host; after a cold one, its hosts are found orphaned once its time runs out.
        _liveness.stop(forget=not _cold)

    close_default_pool()
