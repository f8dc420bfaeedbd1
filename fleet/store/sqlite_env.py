"""A run's `--env` values in SQLite (a mixin of `SqliteRunStore`, embedded mode).

The same rule as in Redis (`fleet.store.redis_env`): one row per run, read by run id,
deleted when the run finishes and ignored (then purged) past its expiry time. The
history file is private (0600, `fleet.store.sqlite_store`); SQLite's ``secure_delete``
overwrites a deleted row's bytes in the file rather than leaving them in a free page,
and a checkpoint empties the WAL that still holds them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from fleet.store.keys import dumps
from fleet.store.parts import SqlitePart
from fleet.store.redis_env import decode_env

ENV_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_env (
    run_id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    expires REAL NOT NULL
);
"""


class SqliteEnv(SqlitePart):
    """`stage_env` / `staged_env` / `drop_env` of the `RunStore` protocol."""

    _lock: threading.Lock
    _env_ready = False

    def _env_table(self) -> None:
        if not self._env_ready:
            self._conn.executescript(ENV_SCHEMA)
            self._conn.execute("PRAGMA secure_delete=ON")
            self._env_ready = True

    def stage_env(self, run_id: str, values: Mapping[str, str], ttl_s: float) -> None:
        now = time.time()
        expires = now + max(1.0, min(float(self._retention), ttl_s))
        with self._guard(), self._lock:
            self._env_table()
            with self._transaction() as conn:
                conn.execute("DELETE FROM run_env WHERE expires <= ?", (now,))
                conn.execute(
                    "INSERT OR REPLACE INTO run_env (run_id, data, expires) VALUES (?, ?, ?)",
                    (run_id, dumps(dict(values)), expires),
                )

    def staged_env(self, run_id: str) -> dict[str, str] | None:
        with self._guard(), self._lock:
            self._env_table()
            row = self._conn.execute(
                "SELECT data FROM run_env WHERE run_id = ? AND expires > ?",
                (run_id, time.time()),
            ).fetchone()
        return decode_env(row[0]) if row else None

    def drop_env(self, run_id: str) -> None:
        with self._guard(), self._lock:
            self._env_table()
            with self._transaction() as conn:
                gone = conn.execute("DELETE FROM run_env WHERE run_id = ?", (run_id,))
            if gone.rowcount:
                # The WAL still holds the page as it was written: copy the cleared
                # page back and empty the WAL (best effort: a reader may hold it).
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
