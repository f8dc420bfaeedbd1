"""Files staged for a run in SQLite (a mixin of `SqliteRunStore`; `fleet.staging` uses it).

The embedded history's ``blobs`` table: (run_id, name, idx) -> data, with `expires`
(epoch seconds): rows past it are deleted on each write, and `blob_delete` removes a
run's rows once the run is over.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from fleet.store.parts import SqlitePart

BLOB_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (run_id, name, idx)
);
"""


class SqliteBlobs(SqlitePart):
    """`blob_put_chunk` / `blob_chunk` / `blob_delete` of the `RunStore` protocol."""

    _lock: threading.Lock
    _blobs_ready = False

    def _blob_table(self) -> None:
        if not self._blobs_ready:
            self._conn.executescript(BLOB_SCHEMA)
            self._blobs_ready = True

    def blob_put_chunk(self, run_id: str, name: str, index: int, data: bytes, ttl_s: int) -> None:
        now = time.time()
        with self._guard(), self._lock:
            self._blob_table()
            self._conn.execute("DELETE FROM blobs WHERE expires < ?", (now,))
            if index == 0:
                self._conn.execute(
                    "DELETE FROM blobs WHERE run_id = ? AND name = ?", (run_id, name)
                )
            self._conn.execute(
                "INSERT OR REPLACE INTO blobs (run_id, name, idx, data, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, name, index, sqlite3.Binary(data), now + ttl_s),
            )

    def blob_chunk(self, run_id: str, name: str, index: int) -> bytes | None:
        with self._guard(), self._lock:
            self._blob_table()
            row = self._conn.execute(
                "SELECT data FROM blobs WHERE run_id = ? AND name = ? AND idx = ? AND expires >= ?",
                (run_id, name, index, time.time()),
            ).fetchone()
        return bytes(row[0]) if row is not None else None

    def blob_delete(self, run_id: str) -> None:
        with self._guard(), self._lock:
            self._blob_table()
            self._conn.execute("DELETE FROM blobs WHERE run_id = ?", (run_id,))
