"""`Settings`: every tunable value, resolved once.

Precedence: an explicit override (a command-line flag) > a ``FLEET_*`` environment
variable > the default here. Other modules receive values; they never read
``os.environ`` themselves.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError

ENV_PREFIX = "FLEET_"
DAY = 86400


def default_home(env: Mapping[str, str] | None = None) -> str:
    """fleet's own directory when ``FLEET_HOME`` is not set: ``$XDG_DATA_HOME/fleet``,
    by default ``~/.local/share/fleet`` (XDG Base Directory Specification: a relative
    ``XDG_DATA_HOME`` is invalid and ignored)."""
    data = (os.environ if env is None else env).get("XDG_DATA_HOME", "")
    if not os.path.isabs(data):
        data = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "fleet")


@dataclass(frozen=True, slots=True)
class Settings:
    inventory: str = "inventory.yaml"
    broker_url: str | None = None  # None: embedded mode (in-process worker, SQLite history)
    result_backend: str | None = None  # defaults to the broker URL when it is redis://
    store_url: str | None = None  # run store; defaults to the result backend
    home: str = ""  # embedded mode keeps its SQLite history here
    connect_timeout: float = 10.0  # TCP connect + SSH banner + key exchange
    auth_timeout: float = 10.0
    command_timeout: float = 300.0  # wall time of one command on one host
    deadline: float | None = None  # whole run; default derived from the timeouts
    output_cap: int = 1 << 20  # bytes kept per stream per host
    inventory_max_bytes: int = 8 << 20  # variable values all resolved hosts carry; 0: no limit
    known_hosts: str = ""  # fleet's own known_hosts file (besides ~/.ssh/known_hosts)
    ssh_config: str = ""  # ~/.ssh/config by default; "none" to ignore it
    accept_new_host_keys: bool = False  # on a worker: the most a task message may ask for
    allow_local: bool = False  # on a worker: run `connection: local` hosts (embedded: always)
    secret_env: str = ""  # on a worker: what password_env may name ("DB_PASS,DEPLOY_*")
    worker_inventory: str = ""  # on a worker: connect only to its hosts, with its values
    signing_key: str = ""  # PEM RSA key this process signs task messages with (fleet.signing)
    signing_cert: str = ""  # its X.509 certificate
    signing_cert_store: str = ""  # directory of trusted signers' certificates (workers)
    # Live SSH transports kept per worker process: a warm run of 2,000 hosts over two
    # workers (about 1,000 each by fleet.affinity) keeps them all (bench/README.md).
    host_affinity: bool = False  # route each host to the worker holding its connection
    pool_size: int = 1500
    pool_idle_ttl: float = 300.0
    # SSH handshakes in progress at once per sshd (address:port), across all workers
    # (fleet.ssh.handshakes); below a stock sshd's MaxStartups 10. 0: no limit.
    handshakes_per_target: int = 8
    retention: int = 7 * DAY  # run history, progress events, claims
    audit_retention: int = 90 * DAY  # the audit log of submits and cancels (fleet.audit)
    transfer_limit: int = 64 << 20  # bytes: largest file script/copy/fetch moves (staged)
    watchdog_interval: float = 10.0  # how often each worker finishes overdue runs
    # A worker silent this long counts as dead: the hosts it held end `lost` (fleet.orphans).
    worker_dead_after: float = 15.0
    prefix: str = "fleet"  # every Redis key starts with this

    @property
    def is_embedded(self) -> bool:
        return not self.broker_url

    def require_result_backend(self) -> None:
        """Raise `ConfigError` when a broker is set but nothing holds results and history.

        Only a Redis broker doubles as the result backend; a RabbitMQ broker needs
        ``FLEET_RESULT_BACKEND`` (a Redis), or every run would wait for results nobody stores.
        """
        if self.broker_url and not self.store_url:
            raise ConfigError(
                f"FLEET_RESULT_BACKEND is not set: with the broker {redact_url(self.broker_url)} "
                "fleet needs a Redis for results and run history "
                "(e.g. FLEET_RESULT_BACKEND=redis://host:6379/0)"
            )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Resolve settings from overrides (None means "not given"), environment, defaults.

        Raises `ConfigError` naming the variable when an environment value has the wrong type.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw, f.type)
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        settings = cls(**values)
        if not settings.home:
            settings = _replace(settings, home=default_home(env))
        if not settings.known_hosts:
            settings = _replace(settings, known_hosts=str(Path(settings.home) / "known_hosts"))
        if (
            settings.broker_url
            and not settings.result_backend
            and settings.broker_url.startswith(("redis://", "rediss://"))
        ):
            settings = _replace(settings, result_backend=settings.broker_url)
        if settings.result_backend and not settings.store_url:
            settings = _replace(settings, store_url=settings.result_backend)
        return settings


#: Integer settings where 0 means "no limit" or "off"; every other one must be above 0.
ZERO_MEANS_OFF = frozenset({"inventory_max_bytes", "handshakes_per_target"})

#: Every default, in one place: other modules read theirs from here.
DEFAULTS = Settings()


def _replace(settings: Settings, **changes: Any) -> Settings:
    data = {f.name: getattr(settings, f.name) for f in fields(settings)}
    data.update(changes)
    return Settings(**data)


def _parse(name: str, raw: str, annotation: Any) -> Any:
    var = ENV_PREFIX + name.upper()
    kind = str(annotation)
    try:
        if kind.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            number = int(raw)
            if number < 0 or (number == 0 and name not in ZERO_MEANS_OFF):
                raise ValueError(raw)
            return number
        if kind.startswith("float"):
            value = float(raw)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(raw)
            return value
    except ValueError:
        kind_said = kind.split(" ")[0]
        if kind_said in ("int", "float"):
            floor = "0 or more" if name in ZERO_MEANS_OFF else "above 0"
            kind_said = f"a {'whole ' if kind_said == 'int' else ''}number {floor}"
        raise ConfigError(f"{var}: expected {kind_said}, got {raw!r}") from None
    return raw


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
