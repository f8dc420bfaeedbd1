"""Choosing the run store for a set of settings, without importing Celery."""

from __future__ import annotations

from pathlib import Path

from fleet.settings import Settings
from fleet.store_api import RunStore

HISTORY_FILE = "history.sqlite3"


def open_store(settings: Settings) -> RunStore:
    """A new run store: SQLite under `settings.home` in embedded mode, else Redis.

    Raises `BackendError` when the Redis URL is malformed, `ConfigError` when a broker
    is set without a result backend (`Settings.require_result_backend`).
    """
    settings.require_result_backend()
    if settings.is_embedded or not settings.store_url:
        from fleet.sqlite_store import SqliteRunStore

        Path(settings.home).mkdir(parents=True, exist_ok=True)
        return SqliteRunStore(Path(settings.home) / HISTORY_FILE, retention=settings.retention)
    from fleet.store import RedisRunStore

    return RedisRunStore.from_url(
        settings.store_url, prefix=settings.prefix, retention=settings.retention
    )
