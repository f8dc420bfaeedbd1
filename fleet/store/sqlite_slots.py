"""Timed slots in SQLite (a mixin of `SqliteRunStore`): the rule of Redis
(`fleet.store.redis_slots`): a slot is held until a time, so a holder that died frees
it when that time passes. Every process using the same history file shares the slots;
their clock is the machine's.
"""

from __future__ import annotations

import threading
import time

from fleet.store.parts import SqlitePart
from fleet.store.protocol import Slot

SLOTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    scope TEXT NOT NULL,
    holder TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (scope, holder)
);
"""


class SqliteSlots(SqlitePart):
    """`take_slot` / `release_slot` of the `RunStore` protocol."""

    _lock: threading.Lock
    _slots_ready = False

    def _slots_table(self) -> None:
        if not self._slots_ready:
            self._conn.executescript(SLOTS_SCHEMA)
            self._slots_ready = True

    def take_slot(self, scope: str, holder: str, limit: int, hold_s: float) -> Slot:
        now = time.time()
        with self._guard(), self._lock:
            self._slots_table()
            with self._transaction() as conn:
                conn.execute("DELETE FROM slots WHERE until <= ?", (now,))
                held = conn.execute("SELECT holder FROM slots WHERE scope = ?", (scope,)).fetchall()
                if (holder,) in held:
                    return Slot.HELD
                if len(held) >= limit:
                    return Slot.FULL
                conn.execute(
                    "INSERT INTO slots (scope, holder, until) VALUES (?, ?, ?)",
                    (scope, holder, now + hold_s),
                )
                return Slot.TAKEN

    def release_slot(self, scope: str, holder: str, linger_s: float = 0.0) -> None:
        with self._guard(), self._lock:
            self._slots_table()
            with self._transaction() as conn:
                if linger_s > 0:
                    conn.execute(
                        "UPDATE slots SET until = ? WHERE scope = ? AND holder = ?",
                        (time.time() + linger_s, scope, holder),
                    )
                else:
                    conn.execute(
                        "DELETE FROM slots WHERE scope = ? AND holder = ?", (scope, holder)
                    )
