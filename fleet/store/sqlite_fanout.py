"""A rolling run's `--fanout` slots in SQLite (a mixin of `SqliteRunStore`).

The same rule as in Redis (`fleet.store.redis_fanout`): a slot is held until a time,
so a holder that died frees it when that time passes. Embedded mode has one process,
so its clock is the only one.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import AbstractContextManager

FANOUT_SCHEMA = """
CREATE TABLE IF NOT EXISTS fanout (
    run_id TEXT NOT NULL,
    host TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (run_id, host)
);
"""


class SqliteFanout:
    """`take_fanout_slot` / `release_fanout_slot` of the `RunStore` protocol."""

    _conn: sqlite3.Connection
    _lock: threading.Lock
    _fanout_ready = False

    def _guard(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # SqliteRunStore's

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _fanout_table(self) -> None:
        if not self._fanout_ready:
            self._conn.executescript(FANOUT_SCHEMA)
            self._fanout_ready = True

    def take_fanout_slot(self, run_id: str, host: str, limit: int, hold_s: float) -> bool:
        now = time.time()
        with self._guard(), self._lock:
            self._fanout_table()
            with self._transaction() as conn:
                conn.execute("DELETE FROM fanout WHERE run_id = ? AND until <= ?", (run_id, now))
                held = conn.execute(
                    "SELECT host FROM fanout WHERE run_id = ?", (run_id,)
                ).fetchall()
                if (host,) in held:
                    return True
                if len(held) >= limit:
                    return False
                conn.execute(
                    "INSERT INTO fanout (run_id, host, until) VALUES (?, ?, ?)",
                    (run_id, host, now + hold_s),
                )
                return True

    def release_fanout_slot(self, run_id: str, host: str) -> None:
        with self._guard(), self._lock:
            self._fanout_table()
            with self._transaction() as conn:
                conn.execute("DELETE FROM fanout WHERE run_id = ? AND host = ?", (run_id, host))
