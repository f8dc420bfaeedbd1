"""Claims of hosts, and worker liveness, in SQLite (a mixin of `SqliteRunStore`).

Every worker counts as alive: the SQLite store serves the embedded mode, whose one
worker runs inside the process that submitted and follows the run, so when that worker
dies, so does everything that would notice. Its hosts end `lost` at the run's deadline
(`fleet.lifecycle.finalize_run`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fleet.store.parts import SqlitePart
from fleet.store.protocol import Holder


class SqliteClaims(SqlitePart):
    """`claim_host`, `claim_holder`, `claim_holders`, `claim_pids`, `beat_alive`, `forget_alive` and
    `dead_workers` of the `RunStore` protocol."""

    def claim_host(self, run_id: str, host: str, worker: str) -> bool:
        claim = "INSERT OR IGNORE INTO claims (run_id, host, worker) VALUES (?, ?, ?)"
        with self._guard(), self._lock:
            cursor = self._conn.execute(claim, (run_id, host, worker))
        return cursor.rowcount == 1

    def claim_holder(self, run_id: str, host: str) -> str | None:
        query = "SELECT worker FROM claims WHERE run_id = ? AND host = ?"
        with self._guard(), self._lock:
            row = self._conn.execute(query, (run_id, host)).fetchone()
        return str(row[0]) if row else None

    def claim_holders(self, run_id: str, hosts: Sequence[str]) -> dict[str, Holder]:
        if not hosts:
            return {}
        wanted = set(hosts)
        query = "SELECT host, worker FROM claims WHERE run_id = ?"
        with self._guard(), self._lock:
            rows = self._conn.execute(query, (run_id,)).fetchall()
        return {str(host): (str(worker), "") for host, worker in rows if host in wanted}

    def claim_pids(self, run_id: str, hosts: Sequence[str]) -> dict[str, int]:
        return {}  # embedded mode: one process, no pool processes

    def beat_alive(self, worker: str, ttl_s: float) -> float:
        return time.time()

    def forget_alive(self, worker: str) -> None:
        return None

    def dead_workers(self, within_s: float, judge: str, min_left_s: float) -> dict[Holder, float]:
        return {}
