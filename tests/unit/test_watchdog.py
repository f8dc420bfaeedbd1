"""The watchdog finishes overdue runs that nobody follows (real SQLite store)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from fleet.inventory.hosts import Host
from fleet.results import HostResult, RunRecord, Status, utc_now
from fleet.store.sqlite_store import SqliteRunStore
from fleet.watchdog import Watchdog, finalize_overdue

HOSTS = (Host("web01", "10.0.0.1"), Host("web02", "10.0.0.2"))


def make_run(store: SqliteRunStore, run_id: str, deadline_in: float) -> RunRecord:
    run = RunRecord(
        run_id=run_id,
        command="uptime",
        pattern="web",
        hosts=tuple(h.name for h in HOSTS),
        created_at=utc_now(),
        deadline=time.time() + deadline_in,
    )
    store.create_run(run, HOSTS)
    return run


def test_only_overdue_runs_are_finished(tmp_path: Path) -> None:
    store = SqliteRunStore(tmp_path / "h.sqlite3")
    make_run(store, "overdue", -1)
    make_run(store, "current", 600)
    assert store.claim_host("overdue", "web01", "w1@node")
    store.save_result("overdue", HostResult(host="web01", status=Status.OK, exit_code=0))
    assert finalize_overdue(store) == ["overdue"]
    statuses = {r.host: r.status for r in store.load_report("overdue").results}  # type: ignore[union-attr]
    assert statuses == {"web01": Status.OK, "web02": Status.LOST}
    assert store.get_run("overdue").state == "finished"
    assert store.get_run("current").state == "running"
    assert finalize_overdue(store) == []  # idempotent


def test_watchdog_thread_sweeps_on_its_own(tmp_path: Path) -> None:
    store = SqliteRunStore(tmp_path / "h.sqlite3")
    make_run(store, "soon", 0.3)
    dog = Watchdog(store, interval_s=0.1)
    dog.start()
    try:
        deadline = time.monotonic() + 10
        while store.get_run("soon").state != "finished" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dog.stop()
    assert store.get_run("soon").state == "finished"


def test_one_runs_bad_data_does_not_stop_the_sweep(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteRunStore(tmp_path / "h.sqlite3")
    make_run(store, "good", -1)
    make_run(store, "tampered", -1)
    store.save_result("tampered", HostResult(host="web01", status=Status.OK, exit_code=0))
    with store._conn:  # a result that is no longer a result (written by someone else)
        store._conn.execute("UPDATE results SET data = '{\"status\": 7}' WHERE run_id = 'tampered'")
    with caplog.at_level(logging.WARNING):
        # The unreadable result stands as an `error` for its host; the run finishes too.
        assert sorted(finalize_overdue(store)) == ["good", "tampered"]
    assert any("tampered" in r.getMessage() for r in caplog.records)
    assert store.get_run("good").state == "finished"
    assert store.results("tampered")["web01"].status is Status.ERROR
    # A record that cannot be decoded at all is skipped, and the sweep goes on.
    make_run(store, "later", -1)
    with store._conn:
        store._conn.execute("UPDATE runs SET hosts = '[{' WHERE run_id = 'later'")
    with caplog.at_level(logging.WARNING):
        assert finalize_overdue(store) == []
    assert any("later" in r.getMessage() for r in caplog.records)


def test_an_unreadable_record_is_skipped_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteRunStore(tmp_path / "h.sqlite3")
    make_run(store, "fine", 600)
    make_run(store, "broken", -1)
    with store._conn:
        store._conn.execute("UPDATE runs SET record = 'not json' WHERE run_id = 'broken'")
    with caplog.at_level(logging.WARNING, logger="fleet.store"):
        assert [r.run_id for r in store.list_runs()] == ["fine"]
        assert finalize_overdue(store) == []  # and the sweep goes on without it
    assert any("broken" in r.getMessage() and "unreadable" in r.getMessage()
               for r in caplog.records)  # fmt: skip
