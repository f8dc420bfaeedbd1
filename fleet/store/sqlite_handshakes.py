"""SSH handshake slots in SQLite (a mixin of `SqliteRunStore`; `fleet.ssh.handshakes`).

The rule of Redis (`fleet.store.redis_handshakes`): a slot is held until a time, so a
holder that died frees it when that time passes. Every process using the same history
file (two embedded runs at once) shares the slots; their clock is the machine's.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import AbstractContextManager

HANDSHAKES_SCHEMA = """
CREATE TABLE IF NOT EXISTS handshakes (
    endpoint TEXT NOT NULL,
    holder TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (endpoint, holder)
);
"""


class SqliteHandshakes:
    """`take_handshake_slot` / `release_handshake_slot` of the `RunStore` protocol."""

    _conn: sqlite3.Connection
    _lock: threading.Lock
    _handshakes_ready = False

    def _guard(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # SqliteRunStore's

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _handshakes_table(self) -> None:
        if not self._handshakes_ready:
            self._conn.executescript(HANDSHAKES_SCHEMA)
            self._handshakes_ready = True

    def take_handshake_slot(self, endpoint: str, holder: str, limit: int, hold_s: float) -> bool:
        now = time.time()
        with self._guard(), self._lock:
            self._handshakes_table()
            with self._transaction() as conn:
                conn.execute("DELETE FROM handshakes WHERE until <= ?", (now,))
                held = conn.execute(
                    "SELECT holder FROM handshakes WHERE endpoint = ?", (endpoint,)
                ).fetchall()
                if (holder,) in held:
                    return True
                if len(held) >= limit:
                    return False
                conn.execute(
                    "INSERT INTO handshakes (endpoint, holder, until) VALUES (?, ?, ?)",
                    (endpoint, holder, now + hold_s),
                )
                return True

    def release_handshake_slot(self, endpoint: str, holder: str, linger_s: float = 0.0) -> None:
        with self._guard(), self._lock:
            self._handshakes_table()
            with self._transaction() as conn:
                if linger_s > 0:
                    conn.execute(
                        "UPDATE handshakes SET until = ? WHERE endpoint = ? AND holder = ?",
                        (time.time() + linger_s, endpoint, holder),
                    )
                else:
                    conn.execute(
                        "DELETE FROM handshakes WHERE endpoint = ? AND holder = ?",
                        (endpoint, holder),
                    )
