"""The audit log in SQLite (a mixin of `SqliteRunStore`): `append_audit`, `audit_entries`.

The embedded history's ``audit`` table, apart from the run tables and with its own
retention (``FLEET_AUDIT_RETENTION``): `at` (epoch seconds of the entry's time) and
`data` (the JSON of an `AuditEntry`). Rows are only ever inserted, and deleted once
older than the retention (on each append); purging runs never touches them.
Reading skips, with a warning naming its row id, a row that is not a well-formed
`AuditEntry` (`fleet.audit.decode_entries`).
"""

from __future__ import annotations

import threading
import time

from fleet.audit import AuditEntry, decode_entries
from fleet.settings import DEFAULTS
from fleet.store.keys import dumps
from fleet.store.parts import SqlitePart

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
"""


class SqliteAudit(SqlitePart):
    """`append_audit` / `audit_entries` of the `RunStore` protocol."""

    _lock: threading.Lock
    _audit_retention: int = DEFAULTS.audit_retention
    _audit_ready = False

    def _audit_table(self) -> None:
        if not self._audit_ready:
            self._conn.executescript(AUDIT_SCHEMA)
            self._audit_ready = True

    def append_audit(self, entry: AuditEntry) -> None:
        row = (entry.epoch, dumps(entry.to_dict()))
        with self._guard(), self._lock:
            self._audit_table()
            self._conn.execute(
                "DELETE FROM audit WHERE at < ?", (time.time() - self._audit_retention,)
            )
            self._conn.execute("INSERT INTO audit (at, data) VALUES (?, ?)", row)

    def audit_entries(self, since: float | None = None, limit: int = 100) -> list[AuditEntry]:
        if limit <= 0:
            return []  # SQLite reads a negative LIMIT as "no limit"
        floor = max(since or 0.0, time.time() - self._audit_retention)
        with self._guard(), self._lock:
            self._audit_table()
            rows = self._conn.execute(
                "SELECT id, data FROM audit WHERE at >= ? ORDER BY at DESC, id DESC",
                (floor,),
            )
            out: list[AuditEntry] = []
            for row_id, data in rows:
                # A row that is not even text is as unreadable as bad JSON.
                text = data if isinstance(data, str | bytes) else ""
                out += decode_entries([(str(row_id), text)])
                if len(out) >= limit:
                    break
        return out
