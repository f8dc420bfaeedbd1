"""The run store contract against SQLite (embedded mode), plus what is SQLite's own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.errors import BackendError
from fleet.inventory.hosts import Host
from fleet.results import RunRecord, utc_now
from fleet.store.protocol import RunStore
from fleet.store.sqlite_store import SqliteRunStore
from tests.store_contract import MakeStore, StoreContract, make_hosts, make_run, ok


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[SqliteRunStore] = []

    def make(retention: int = 7 * 86400) -> RunStore:
        store = SqliteRunStore(tmp_path / f"history-{len(opened)}.sqlite3", retention=retention)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


class TestSqliteStore(StoreContract):
    pass


def test_history_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    hosts = make_hosts("web01")
    store = SqliteRunStore(path)
    store.create_run(make_run("r1", hosts), hosts)
    store.save_result("r1", ok("web01"))
    store.close()
    again = SqliteRunStore(path)
    try:
        assert again.get_run("r1").run_id == "r1"
        assert set(again.results("r1")) == {"web01"}
    finally:
        again.close()


def test_retention_is_applied_on_open(tmp_path: Path) -> None:
    import sqlite3
    import time

    path = tmp_path / "history.sqlite3"
    hosts = make_hosts("web01")
    store = SqliteRunStore(path)
    store.create_run(make_run("r1", hosts), hosts)
    store.save_result("r1", ok("web01"))
    store.add_event("r1", {"type": "finished"})
    store.close()
    time.sleep(1.1)
    SqliteRunStore(path, retention=1).close()
    with sqlite3.connect(path) as conn:
        for table in ("runs", "results", "events", "claims", "run_hosts"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table


def test_sqlite_errors_are_backend_errors(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(BackendError, match=r"dir\.sqlite3"):
        SqliteRunStore(tmp_path / "dir.sqlite3")
    store = SqliteRunStore(tmp_path / "ok.sqlite3")
    store.close()
    with pytest.raises(BackendError):
        store.ping()


def test_embedded_store_does_not_import_redis() -> None:
    code = (
        "import sys, fleet.store.sqlite_store, fleet.store.protocol;"
        "assert 'redis' not in sys.modules, 'redis imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_embedded_history_and_its_home_are_private(tmp_path: Path) -> None:
    import stat

    from fleet.settings import Settings
    from fleet.store import HISTORY_FILE, open_store

    home = tmp_path / "home"
    store = open_store(Settings.load(env={"FLEET_HOME": str(home)}))
    try:
        run = RunRecord("r1", "uptime", "web", ("h",), utc_now(), 1e12)
        store.create_run(run, (Host("h", "10.0.0.1"),))  # writes: -wal and -shm exist now
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for name in (HISTORY_FILE, f"{HISTORY_FILE}-wal", f"{HISTORY_FILE}-shm"):
            path = home / name
            assert path.exists(), name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    finally:
        store.close()
