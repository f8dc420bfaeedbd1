"""The run store: runs, per-host results, claims, progress events and history.

- `fleet.store.protocol`: `RunStore`, what every store offers (and the claim rules);
- `fleet.store.keys`: the Redis key layout, value formats and expiry, in one place;
- `fleet.store.redis_store`: `RedisRunStore`, the distributed store (the only module
  that imports redis);
- `fleet.store.sqlite_store`: `SqliteRunStore`, the embedded mode's local history;
- `open_store(settings)`: the store for a set of settings (below), without Celery.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleet.errors import ConfigError
from fleet.settings import Settings, default_home
from fleet.store.protocol import RunStore

__all__ = ["HISTORY_FILE", "RunStore", "open_store"]

HISTORY_FILE = "history.sqlite3"


def _private_home(home: Path) -> None:
    """Create fleet's home 0700 (it holds the history and fleet's known_hosts). A
    directory fleet did not create is left as it is (``FLEET_HOME=~`` must not lock
    others out of a home), except fleet's default one. Raises `ConfigError`."""
    try:
        created = not home.exists()
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not home.is_dir():
            raise NotADirectoryError(20, "not a directory")
        if (created or str(home) == default_home()) and home.stat().st_uid == os.getuid():
            home.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"FLEET_HOME {home}: {exc.strerror or exc}") from exc


def open_store(settings: Settings) -> RunStore:
    """A new run store: SQLite under `settings.home` in embedded mode, else Redis.

    Raises `BackendError` when the Redis URL is malformed, `ConfigError` when a broker
    is set without a result backend (`Settings.require_result_backend`).
    """
    settings.require_result_backend()
    if settings.is_embedded or not settings.store_url:
        from fleet.store.sqlite_store import SqliteRunStore

        _private_home(Path(settings.home))
        return SqliteRunStore(
            Path(settings.home) / HISTORY_FILE,
            retention=settings.retention,
            audit_retention=settings.audit_retention,
        )
    from fleet.store.redis_store import RedisRunStore

    return RedisRunStore.from_url(
        settings.store_url,
        prefix=settings.prefix,
        retention=settings.retention,
        audit_retention=settings.audit_retention,
    )
