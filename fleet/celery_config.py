"""fleet's Celery settings: the safety settings a site cannot weaken, and the site's own.

Two layers, applied in this order by `fleet.celery.create_app`:

1. fleet's settings below (`SAFETY` and `DEFAULTS`), from inside the package, so no
   other module named ``celeryconfig`` can replace them;
   (the fairness settings depend on the broker: `BROKER_SAFETY`);
2. the site's settings: a module named ``celeryconfig`` on ``sys.path`` (usually the
   current directory; the repository's top-level ``celeryconfig.py`` is the template),
   loaded as ``app.config_from_object('celeryconfig')`` would load it.

A site may change any setting, except that a safety setting is only taken when it is at
least as strict as fleet's; a weaker one is not taken, and the worker says so in one line
at start (`refused_settings`). Plain values (no Celery import), so the submitter and the
tests can read them cheaply.

Sources: Celery's "Configuration and defaults" and "Optimizing: Prefetch limits"
(``task_acks_late`` with ``worker_prefetch_multiplier = 1`` reserves one task per slot).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fleet.errors import ConfigError
from fleet.inventory.hosts import DEFAULT_QUEUE

#: The module holding a site's Celery settings (Celery's own convention).
SITE_MODULE = "celeryconfig"

#: `fleet worker`'s pool and concurrency when none is given. Network-bound work: threads.
#: `celery -A fleet worker` keeps Celery's own defaults unless given ``-P``/``-c``: a
#: config value would beat an explicit ``-P prefork`` on the command line (PITFALLS).
DEFAULT_POOL = "threads"
DEFAULT_CONCURRENCY = 64
POOLS = ("threads", "prefork", "gevent")  # each tested: tests/integration/test_pools.py

#: The Redis broker gives an unacknowledged message back after this many seconds.
VISIBILITY_TIMEOUT_S = 12 * 3600
#: No run may last longer than this: its unacked messages must not come back mid-run.
MAX_RUN_DEADLINE_S = VISIBILITY_TIMEOUT_S - 3600

JSON = "json"
AUTH = "auth"  # Celery's signing serializer (fleet.signing)
#: Celery's message-signing settings: fleet sets them from FLEET_SIGNING_* only.
SECURITY_SETTINGS = (
    "security_key",
    "security_certificate",
    "security_cert_store",
    "security_digest",
    "security_key_password",
)
_ONE_PER_SLOT = "a busy slot must not hold another host's message"
_NO_CRASH_ON_RECONNECT = "a late ack racing a Redis reconnect crashes the worker"
_JSON_TYPES = frozenset({"json", "application/json"})


@dataclass(frozen=True, slots=True)
class SafetySetting:
    """One setting fleet relies on: its value, and what a site may set instead."""

    value: Any
    why: str
    allows: Callable[[Any], bool]


def _json_only(value: Any) -> bool:
    return (
        isinstance(value, list | tuple | set | frozenset)
        and bool(value)
        and (set(value) <= _JSON_TYPES)
    )


def _never(_value: Any) -> bool:
    return False


def _is(expected: Any) -> Callable[[Any], bool]:
    return lambda value: value == expected


def _at_least(minimum: float) -> Callable[[Any], bool]:
    return lambda value: (
        isinstance(value, int | float) and not isinstance(value, bool) and value >= minimum
    )


SAFETY: dict[str, SafetySetting] = {
    # A pickle in the broker is code execution on every worker.
    "task_serializer": SafetySetting(JSON, "JSON only", _is(JSON)),
    "result_serializer": SafetySetting(JSON, "JSON only", _is(JSON)),
    "event_serializer": SafetySetting(JSON, "JSON only", _is(JSON)),
    "accept_content": SafetySetting([JSON], "JSON only", _json_only),
    "result_accept_content": SafetySetting([JSON], "JSON only", _json_only),
    # One message per slot: with the default window (4 x concurrency) one worker hoards
    # slow hosts while others sit idle (PR #2994).
    "worker_prefetch_multiplier": SafetySetting(1, _ONE_PER_SLOT, _is(1)),
    # True can redeliver a task forever when its process dies (celery #3053).
    "task_reject_on_worker_lost": SafetySetting(False, "no redelivery loops", _is(False)),
    # Eager tasks would run in the submitter, with none of the worker's checks.
    "task_always_eager": SafetySetting(False, "tasks run on workers", _is(False)),
}

#: How each broker keeps a busy slot from holding another host's message. With early
#: ack the prefetch window reopens as soon as a task starts, so a worker busy with a
#: slow host reserves the next one while other workers sit idle (celery #6500).
#: - Redis: early ack, and Celery's ``worker_disable_prefetch`` (5.6+, Redis only): no
#:   message is taken while every slot is busy. Late ack is not used on Redis: an ack
#:   racing a broker reconnect crashes the worker (kombu's channel has no connection
#:   then: "Unrecoverable error: AttributeError ... 'hostname'", seen in
#:   tests/integration/test_faults.py::test_redis_restarted_mid_run).
#: - RabbitMQ (and any other broker): late ack with prefetch 1, Celery's documented
#:   answer ("Optimizing: Prefetch limits"); a redelivery after a worker died finds the
#:   host's claim taken and never runs the command twice.
#: - The embedded memory transport has one in-process worker: nothing to be fair to.
BROKER_SAFETY: dict[str, dict[str, SafetySetting]] = {
    "redis": {
        "task_acks_late": SafetySetting(False, _NO_CRASH_ON_RECONNECT, _is(False)),
        "worker_disable_prefetch": SafetySetting(True, _ONE_PER_SLOT, _is(True)),
    },
    "amqp": {"task_acks_late": SafetySetting(True, _ONE_PER_SLOT, _is(True))},
    "memory": {},
}


def transport_of(broker_url: str | None) -> str:
    """``redis``, ``amqp`` or ``memory`` (embedded): which fairness rule applies."""
    if not broker_url or broker_url.startswith("memory://"):
        return "memory"
    if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return "redis"
    return "amqp"


def safety_for(transport: str) -> dict[str, SafetySetting]:
    """Every safety setting for a broker of kind `transport` (`transport_of`)."""
    return {**SAFETY, **BROKER_SAFETY[transport]}


#: The broker option checked inside ``broker_transport_options``.
_VISIBILITY = SafetySetting(
    VISIBILITY_TIMEOUT_S,
    "no message may come back while its run can still be live",
    _at_least(VISIBILITY_TIMEOUT_S),
)

DEFAULTS: dict[str, Any] = {
    "task_default_queue": DEFAULT_QUEUE,
    "task_create_missing_queues": True,
    "broker_transport_options": {
        # kombu's Redis "ack emulation" keeps each delivered message in an unacked hash
        # until the ack: two Redis round trips per task, a third of a worker's CPU per
        # host (py-spy, bench/README.md), for a redelivery fleet never wants: Redis tasks
        # ack early, a slot takes a message only when free (worker_disable_prefetch), and
        # a host whose worker died ends `lost` by the watchdog. Without it no message
        # ever comes back after `visibility_timeout` either. (kombu: "ack_emulation".)
        "ack_emulation": False,
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        # A hung (not down) Redis must fail a call, not block it forever.
        "socket_timeout": 10.0,
        "socket_connect_timeout": 3.0,
    },
    "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
    "broker_connection_retry_on_startup": True,
    "broker_connection_timeout": 3.0,
    "redis_socket_connect_timeout": 3.0,
    "redis_socket_timeout": 10.0,
    "redis_backend_health_check_interval": 30,
    # Task events (what Flower and `celery events` show, fleet.run_on_host by name) cost
    # a quarter of a worker's CPU per host (py-spy, bench/README.md): only with `-E`
    # (fleet worker -E), or `worker_send_task_events = True` in celeryconfig.py. No
    # "task-sent" event from the submitter either. Sent from pool threads, they used to
    # wake the worker's loop for a free slot as a side effect: fleet.wakeup does it now.
    "worker_send_task_events": False,
    "task_send_sent_event": False,
    "worker_hijack_root_logger": False,
    # `celery -A fleet beat` fires the inventory's schedules (fleet.beat); its state lives
    # in the run store, not in a celerybeat-schedule file.
    "beat_scheduler": "fleet.beat:InventoryScheduler",
    "task_track_started": False,
}


@dataclass(frozen=True, slots=True)
class RefusedSetting:
    """A site setting not taken because it weakens a safety setting."""

    name: str
    given: Any
    kept: Any
    why: str

    def describe(self) -> str:
        return f"{self.name}={self.given!r} (kept {self.kept!r}: {self.why})"


def load_site_settings(module: str = SITE_MODULE) -> dict[str, Any]:
    """The lowercase settings of the site module, or {} when there is none.

    Raises `ConfigError` naming the module when it exists but cannot be imported.
    """
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return {}
        raise ConfigError(f"{module}.py: cannot load: {exc}") from None
    except Exception as exc:  # a site file with a syntax or runtime error
        raise ConfigError(f"{module}.py: cannot load: {type(exc).__name__}: {exc}") from None
    return {
        name: value
        for name, value in vars(mod).items()
        if not name.startswith("_")
        and name.islower()
        and not callable(value)
        and not isinstance(value, ModuleType)
    }


def signing_safety(signing: Mapping[str, Any] | None) -> dict[str, SafetySetting]:
    """The safety settings of message signing. `signing`: the Celery settings of
    `fleet.signing.SigningConfig.celery_settings`, or None when signing is off.

    Signing is configured by ``FLEET_SIGNING_*`` alone: a site's ``security_*`` values
    are never taken, and the ``auth`` serializer is allowed exactly when signing is on
    (then nothing else is: a site cannot switch signing off on a signing worker)."""
    signing = signing or {}
    why = "signing is set by FLEET_SIGNING_KEY, FLEET_SIGNING_CERT, FLEET_SIGNING_CERT_STORE"
    owned = {name: SafetySetting(signing.get(name), why, _never) for name in SECURITY_SETTINGS}
    if not signing:
        return owned
    only_signed = "signed messages only (FLEET_SIGNING_*)"
    return owned | {
        "task_serializer": SafetySetting(signing["task_serializer"], only_signed, _is(AUTH)),
        "accept_content": SafetySetting(signing["accept_content"], only_signed, _is([AUTH])),
    }


def resolve(
    site: Mapping[str, Any],
    *,
    result_expires: int,
    transport: str = "redis",
    signing: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[RefusedSetting]]:
    """fleet's settings with the site's laid over them; returns (config, refused).

    `transport` is the broker's kind (`transport_of`): the fairness settings differ.
    `result_expires` (seconds) follows fleet's run retention: chord state must live as
    long as the run history (PITFALLS: chords expire with it); a shorter site value is
    refused like a weaker safety setting. `signing`: see `signing_safety`.
    """
    safety_settings = safety_for(transport) | signing_safety(signing)
    safety_settings["result_expires"] = SafetySetting(
        result_expires, "chord state must outlive the run", _at_least(result_expires)
    )
    config: dict[str, Any] = {
        name: s.value
        for name, s in safety_settings.items()
        if name not in SECURITY_SETTINGS or s.value is not None
    }
    config.update({k: dict(v) if isinstance(v, dict) else v for k, v in DEFAULTS.items()})
    refused: list[RefusedSetting] = []
    for name, value in site.items():
        safety = safety_settings.get(name)
        if safety is not None and not safety.allows(value):
            refused.append(RefusedSetting(name, value, safety.value, safety.why))
            continue
        if name == "broker_transport_options" and isinstance(value, Mapping):
            merged = dict(config["broker_transport_options"])
            merged.update(value)
            if "visibility_timeout" in value and not _VISIBILITY.allows(
                value["visibility_timeout"]
            ):
                refused.append(
                    RefusedSetting(
                        "broker_transport_options.visibility_timeout",
                        value["visibility_timeout"],
                        _VISIBILITY.value,
                        _VISIBILITY.why,
                    )
                )
                merged["visibility_timeout"] = _VISIBILITY.value
            config[name] = merged
            continue
        config[name] = value
    return config, refused


def refusal_line(refused: list[RefusedSetting]) -> str:
    """The one line a worker logs at start when site settings were not taken."""
    return (
        f"fleet: {SITE_MODULE}.py settings not taken (they would weaken fleet's safety): "
        + "; ".join(r.describe() for r in refused)
    )
