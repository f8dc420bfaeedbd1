"""The run store on SQLite, for embedded mode: same interface and semantics as Redis.

One connection shared by threads (the in-process worker's pool and the CLI)
behind a lock; WAL so another process (a second `fleet runs`) can read while a
run writes. Retention is applied on open and on each new run; reads also treat a
run older than the retention as gone, so a long-lived store agrees with Redis.
Event ids are decimal strings, increasing; callers treat them as opaque.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet.errors import BackendError, RunNotFoundError
from fleet.inventory.hosts import Host
from fleet.results import HostResult, RunRecord, RunReport
from fleet.settings import DEFAULTS
from fleet.store import codec
from fleet.store.keys import dumps, epoch, hosts_from_json, hosts_json
from fleet.store.protocol import (
    RUNNING,
    BeatState,
    beat_state_from,
    listed_run,
    not_found_message,
    read_run,
    result_event,
    start_in_steps,
    stored_result,
)
from fleet.store.sqlite_affinity import SqliteAffinity
from fleet.store.sqlite_audit import SqliteAudit
from fleet.store.sqlite_blobs import SqliteBlobs
from fleet.store.sqlite_claims import SqliteClaims
from fleet.store.sqlite_env import SqliteEnv
from fleet.store.sqlite_slots import SqliteSlots

PRIVATE_FILE_MODE = 0o600
POLL_S = 0.05  # how often a blocked `events` looks for rows written by another process

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    record TEXT NOT NULL,
    state TEXT NOT NULL,
    finished_at TEXT,
    deadline REAL NOT NULL,
    hosts TEXT NOT NULL,
    report TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created);
CREATE TABLE IF NOT EXISTS run_hosts (
    host TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (host, run_id)
);
CREATE TABLE IF NOT EXISTS claims (
    run_id TEXT NOT NULL,
    host TEXT NOT NULL,
    worker TEXT NOT NULL,
    PRIMARY KEY (run_id, host)
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL,
    host TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, host)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, id);
CREATE TABLE IF NOT EXISTS beat_slots (
    schedule TEXT NOT NULL,
    slot INTEGER NOT NULL,
    PRIMARY KEY (schedule, slot)
);
CREATE TABLE IF NOT EXISTS beat (
    schedule TEXT PRIMARY KEY,
    last_slot INTEGER,
    last_run_id TEXT,
    skipped INTEGER NOT NULL DEFAULT 0
);
"""

_RUN_TABLES = ("run_hosts", "claims", "results", "events")


class SqliteRunStore(
    SqliteClaims, SqliteSlots, SqliteAffinity, SqliteAudit, SqliteEnv, SqliteBlobs
):
    """Run history in one SQLite file. Thread-safe."""

    def __init__(
        self,
        path: str | Path,
        *,
        retention: int = DEFAULTS.retention,
        audit_retention: int = DEFAULTS.audit_retention,
    ) -> None:
        self._path = str(path)
        self._retention = int(retention)
        self._audit_retention = int(audit_retention)  # fleet.store.sqlite_audit
        self._lock = threading.Lock()
        self._new_event = threading.Condition(self._lock)
        with self._guard():
            # Private from the start: host output and commands live here, and SQLite
            # creates the -wal and -shm files with the database file's permissions.
            try:
                os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE))
                os.chmod(self._path, PRIVATE_FILE_MODE)
            except OSError as exc:
                raise BackendError(
                    f"run history at {self._path} failed: {exc.strerror or exc}"
                ) from exc
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE) below.
            self._conn = sqlite3.connect(
                self._path, timeout=10.0, check_same_thread=False, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
            with self._lock, self._transaction():
                self._purge()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise BackendError(f"run history at {self._path} failed: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _cutoff(self) -> float:
        return time.time() - self._retention

    def _purge(self) -> None:
        old = "SELECT run_id FROM runs WHERE created < ?"
        cutoff = self._cutoff()
        for table in _RUN_TABLES:
            self._conn.execute(f"DELETE FROM {table} WHERE run_id IN ({old})", (cutoff,))  # noqa: S608
        self._conn.execute("DELETE FROM runs WHERE created < ?", (cutoff,))

    def ping(self) -> None:
        with self._guard(), self._lock:
            self._conn.execute("SELECT 1").fetchone()

    def check_server(self) -> str | None:
        return None

    def create_run(self, run: RunRecord, hosts: Sequence[Host]) -> None:
        row = (
            run.run_id,
            epoch(run.created_at),
            dumps(run.to_dict()),
            run.state,
            run.finished_at,
            run.deadline,
            hosts_json(hosts),
        )
        with self._guard(), self._lock, self._transaction() as conn:
            self._purge()
            for table in _RUN_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run.run_id,))  # noqa: S608
            conn.execute(
                "INSERT OR REPLACE INTO runs"
                " (run_id, created, record, state, finished_at, deadline, hosts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            conn.executemany(
                "INSERT OR IGNORE INTO run_hosts (host, run_id) VALUES (?, ?)",
                [(name, run.run_id) for name in run.hosts],
            )

    def _fetch_run(self, run_id: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._conn.execute(
            "SELECT record, state, finished_at, deadline FROM runs"
            " WHERE run_id = ? AND created >= ?",
            (run_id, self._cutoff()),
        ).fetchone()
        return row

    @staticmethod
    def _decode_run(record: str, state: str, finished_at: str | None) -> RunRecord:
        data = json.loads(record)
        data["state"] = state
        data["finished_at"] = finished_at
        return RunRecord.from_dict(data)

    def get_run(self, run_id: str) -> RunRecord:
        with self._guard(), self._lock:
            row = self._fetch_run(run_id)
        run = None if row is None else read_run(run_id, lambda: self._decode_run(*row[:3]))
        if run is None:
            raise RunNotFoundError(not_found_message(run_id, self._retention))
        return run

    def run_hosts(self, run_id: str) -> tuple[Host, ...]:
        with self._guard(), self._lock:
            row = self._conn.execute(
                "SELECT hosts FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return hosts_from_json(row[0]) if row else ()

    def start_host(self, run_id: str, host: str, worker: str, now: float) -> str:
        return start_in_steps(self, run_id, host, worker, now)

    def is_live(self, run_id: str, now: float | None = None) -> bool:
        with self._guard(), self._lock:
            row = self._fetch_run(run_id)
        if row is None or row[1] != RUNNING:
            return False
        now = time.time() if now is None else now
        return now < float(row[3])

    def set_state(
        self,
        run_id: str,
        state: str,
        *,
        expected: str = RUNNING,
        finished_at: str | None = None,
    ) -> bool:
        with self._guard(), self._lock:
            cursor = self._conn.execute(
                "UPDATE runs SET state = ?, finished_at = COALESCE(?, finished_at)"
                " WHERE run_id = ? AND state = ?",
                (state, finished_at, run_id, expected),
            )
        return cursor.rowcount == 1

    def save_result(self, run_id: str, result: HostResult) -> bool:
        event = dumps(result_event(result))
        data = codec.result_json(result)
        with self._guard(), self._lock, self._transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO results (run_id, host, data) VALUES (?, ?, ?)",
                (run_id, result.host, data),
            )
            stored = cursor.rowcount == 1
            if stored:
                conn.execute("INSERT INTO events (run_id, data) VALUES (?, ?)", (run_id, event))
            else:  # the very same result again is this one (the protocol's rule)
                same = "SELECT data = ? FROM results WHERE run_id = ? AND host = ?"
                return bool(conn.execute(same, (data, run_id, result.host)).fetchone() == (1,))
        if stored:
            with self._new_event:
                self._new_event.notify_all()
        return stored

    def results(self, run_id: str) -> dict[str, HostResult]:
        with self._guard(), self._lock:
            rows = self._conn.execute(
                "SELECT host, data FROM results WHERE run_id = ? ORDER BY rowid", (run_id,)
            ).fetchall()
        return {
            host: stored_result(run_id, host, functools.partial(codec.result_from_json, data))
            for host, data in rows
        }

    def add_event(self, run_id: str, event: Mapping[str, str]) -> str:
        if not event:
            raise ValueError("an event needs at least one field")
        data = dumps({str(k): str(v) for k, v in event.items()})
        with self._guard(), self._lock:
            cursor = self._conn.execute(
                "INSERT INTO events (run_id, data) VALUES (?, ?)", (run_id, data)
            )
            self._new_event.notify_all()
        return str(cursor.lastrowid)

    def events(
        self, run_id: str, after: str = "0", block_ms: int = 0, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        try:
            last = int(after)
        except ValueError:
            last = 0  # an id from another store: start over rather than fail
        deadline = time.monotonic() + max(block_ms, 0) / 1000
        with self._guard(), self._lock:
            while True:
                rows = self._conn.execute(
                    "SELECT id, data FROM events WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
                    (run_id, last, count),
                ).fetchall()
                remaining = deadline - time.monotonic()
                if rows or remaining <= 0:
                    break
                # Woken by this process's writers; polled for another process's.
                self._new_event.wait(min(remaining, POLL_S))
        return [(str(i), json.loads(data)) for i, data in rows]

    def save_report(self, report: RunReport) -> None:
        with self._guard(), self._lock:
            self._conn.execute(
                "UPDATE runs SET report = ? WHERE run_id = ?",
                (codec.summary_json(report), report.run.run_id),
            )

    def load_report(self, run_id: str) -> RunReport | None:
        with self._guard(), self._lock:
            row = self._conn.execute(
                "SELECT report FROM runs WHERE run_id = ? AND created >= ?",
                (run_id, self._cutoff()),
            ).fetchone()
        if row is None or row[0] is None:
            return None
        return RunReport.assemble(self.get_run(run_id), list(self.results(run_id).values()))

    def list_runs(self, limit: int = 20, host: str | None = None) -> list[RunRecord]:
        if limit <= 0:
            return []  # SQLite reads a negative LIMIT as "no limit"
        query = "SELECT run_id, record, state, finished_at FROM runs WHERE created >= ?"
        params: tuple[Any, ...] = (self._cutoff(),)
        if host is not None:
            query += " AND run_id IN (SELECT run_id FROM run_hosts WHERE host = ?)"
            params += (host,)
        query += " ORDER BY created DESC, rowid DESC LIMIT ?"
        with self._guard(), self._lock:
            rows = self._conn.execute(query, (*params, limit)).fetchall()
        listed = (listed_run(row[0], functools.partial(self._decode_run, *row[1:])) for row in rows)
        return [run for run in listed if run is not None]

    def claim_slot(self, schedule: str, slot: int, ttl_s: int) -> bool:
        with self._guard(), self._lock:
            self._conn.execute(  # claims older than their ttl are of no use to anyone
                "DELETE FROM beat_slots WHERE schedule = ? AND slot < ?",
                (schedule, int(slot) - max(1, int(ttl_s))),
            )
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO beat_slots (schedule, slot) VALUES (?, ?)",
                (schedule, int(slot)),
            )
        return cursor.rowcount == 1

    def record_firing(self, schedule: str, slot: int, run_id: str) -> None:
        with self._guard(), self._lock:
            self._conn.execute(
                "INSERT INTO beat (schedule, last_slot, last_run_id) VALUES (?, ?, ?) "
                "ON CONFLICT (schedule) DO UPDATE SET last_slot = excluded.last_slot, "
                "last_run_id = excluded.last_run_id",
                (schedule, int(slot), run_id),
            )

    def count_skip(self, schedule: str) -> int:
        with self._guard(), self._lock:
            self._conn.execute(
                "INSERT INTO beat (schedule, skipped) VALUES (?, 1) "
                "ON CONFLICT (schedule) DO UPDATE SET skipped = skipped + 1",
                (schedule,),
            )
            row = self._conn.execute(
                "SELECT skipped FROM beat WHERE schedule = ?", (schedule,)
            ).fetchone()
        return int(row[0])

    def beat_state(self, schedule: str) -> BeatState:
        with self._guard(), self._lock:
            row = self._conn.execute(
                "SELECT last_slot, last_run_id, skipped FROM beat WHERE schedule = ?",
                (schedule,),
            ).fetchone()
        if row is None:
            return BeatState()
        return beat_state_from(*(None if v is None else str(v) for v in row))

    def close(self) -> None:
        with self._guard(), self._lock:
            self._conn.close()
