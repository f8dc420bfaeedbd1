"""What the store's mixins (``redis_*``/``sqlite_*`` modules beside the two stores) may use
of the store they are mixed into: declared once here for the type checker, defined by
`RedisRunStore` and `SqliteRunStore` themselves."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from fleet.store import keys

if TYPE_CHECKING:
    import sqlite3  # annotations only: the Redis store does not load sqlite3


def text(value: Any) -> str:
    """A Redis reply as text, whether the client decodes responses or not (an invalid
    UTF-8 byte becomes U+FFFD: what is read back from the store is untrusted)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisPart:
    """A part of `fleet.store.redis_store.RedisRunStore`."""

    _client: Any
    _retention: int

    def _guard(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # RedisRunStore's: redis errors as BackendError

    def _key(self, kind: keys.KeyKind, run_id: str = "", host: str = "") -> str:
        raise NotImplementedError  # RedisRunStore's: the one place a key is spelled


class SqlitePart:
    """A part of `fleet.store.sqlite_store.SqliteRunStore`."""

    _conn: sqlite3.Connection
    _lock: threading.Lock
    _retention: int

    def _guard(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # SqliteRunStore's: sqlite errors as BackendError

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # SqliteRunStore's: BEGIN IMMEDIATE ... COMMIT
