"""A host lost with a prefork pool process (`fleet.pool_loss`), and the watchdog's
settling of its run (`fleet.orphans.settle_run`): pure logic over a real SQLite store
(whose claims name no process); the prefork worker itself is in
tests/integration/test_pool_loss.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.orphans import Orphaned, settle_run
from fleet.pool_loss import (
    WATCH_PAST_DEADLINE_S,
    LossWatch,
    done_watching,
    pool_loss_message,
    record_pool_loss,
    task_target,
)
from fleet.results import HostResult, Status
from fleet.store.sqlite_store import SqliteRunStore
from tests.unit.test_orphans import Resumer, make_run, ok, started

RUN_ID = "20261201-041324-0a6789"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRunStore]:
    s = SqliteRunStore(tmp_path / "h.sqlite3")
    yield s
    s.close()


def test_the_task_arguments_give_the_run_host_and_address() -> None:
    host = {"name": "web01", "address": "10.0.0.1", "port": 22}
    assert task_target([RUN_ID, host, "uptime", {}]) == (RUN_ID, "web01", "10.0.0.1")
    assert task_target((RUN_ID, {"name": "web01"})) == (RUN_ID, "web01", "")


@pytest.mark.parametrize(
    "args",
    [
        None,
        "r1",
        [RUN_ID],
        ["../etc", {"name": "web01"}],
        [7, {"name": "web01"}],
        [RUN_ID, "web01"],
        [RUN_ID, {"address": "10.0.0.1"}],
        [RUN_ID, {"name": ["web01"]}],
    ],
)
def test_arguments_that_are_not_a_tasks_are_ignored(args: Any) -> None:
    # A broker message's arguments are untrusted: nothing is recorded for such a one.
    assert task_target(args) is None


def test_an_address_that_is_not_text_is_left_out() -> None:
    assert task_target([RUN_ID, {"name": "web01", "address": 10}]) == (RUN_ID, "web01", "")


def test_the_message_names_the_worker_and_the_reason() -> None:
    text = pool_loss_message("w1@a", "Worker exited prematurely: signal 9 (SIGKILL) Job: 0.")
    assert text.startswith("its worker w1@a lost the pool process running it (Worker exited")
    assert text.endswith("whether the command ran, or how far, is unknown")


def loss(store: SqliteRunStore, host: str = "web01", pid: int | None = 1234) -> Status | None:
    return record_pool_loss(
        store, "r1", host, "10.0.0.1", worker="w1@a", reason="signal 9 (SIGKILL)", pid=pid
    )


def test_a_host_whose_claim_names_no_process_of_ours_is_not_recorded(
    store: SqliteRunStore,
) -> None:
    # SQLite claims name no process (""): never this process's, so never recorded here.
    make_run(store)
    started(store, "web01", "w1@a")
    assert loss(store) is None
    assert store.results("r1") == {}


def test_a_host_nobody_started_is_closed_and_recorded_not_started(
    store: SqliteRunStore,
) -> None:
    make_run(store)
    assert loss(store) is Status.ERROR
    result = store.results("r1")["web01"]
    assert result.error == (
        "not started: its worker w1@a lost the pool process that had taken it (signal 9 (SIGKILL))"
    )
    assert result.worker == "w1@a"
    # Closed: a later copy of its message finds it so and does not start it.
    assert store.start_host("r1", "web01", "w2@b", time.time()) == "closed"
    assert loss(store) is None  # a second word on it changes nothing


def test_without_the_pool_process_pid_nothing_is_recorded(store: SqliteRunStore) -> None:
    make_run(store)
    assert loss(store, pid=None) is None
    assert store.results("r1") == {}


def test_the_watch_keeps_each_run_once_until_dropped() -> None:
    watch = LossWatch()
    watch.add("r2")
    watch.add("r1")
    watch.add("r2")
    assert watch.runs() == ["r1", "r2"]
    watch.drop("r1")
    watch.drop("r9")
    assert watch.runs() == ["r2"]


def test_a_run_is_watched_until_it_ends_or_its_deadline_is_long_past() -> None:
    now = 1000.0
    assert not done_watching(False, deadline=now, now=now)
    assert not done_watching(False, deadline=now, now=now + WATCH_PAST_DEADLINE_S - 1)
    assert done_watching(False, deadline=now, now=now + WATCH_PAST_DEADLINE_S)
    assert done_watching(True, deadline=now + 600, now=now)


def lost(store: SqliteRunStore, host: str) -> None:
    store.save_result("r1", HostResult.not_run(host, Status.LOST, "its pool process died"))


def test_a_run_whose_hosts_all_have_results_is_finished(store: SqliteRunStore) -> None:
    run = make_run(store)
    lost(store, "web01")
    for name in ("web02", "web03", "web04"):
        ok(store, name)
    assert settle_run(store, run, sweeper="w2@b", resume=Resumer(), hold_s=5) is None
    assert store.get_run("r1").state == "finished"


def test_a_run_with_hosts_still_running_is_left_alone(store: SqliteRunStore) -> None:
    run = make_run(store)
    lost(store, "web01")
    ok(store, "web02")
    resume = Resumer()
    assert settle_run(store, run, sweeper="w2@b", resume=resume, hold_s=5) is None
    assert store.get_run("r1").state == "running"
    assert resume.calls == []


def test_a_rolling_run_goes_on_once_the_batch_with_the_lost_host_has_ended(
    store: SqliteRunStore,
) -> None:
    run = make_run(store, batches=(("web01", "web02"), ("web03", "web04")))
    lost(store, "web01")
    resume = Resumer()
    assert settle_run(store, run, sweeper="w2@b", resume=resume, hold_s=5) is None
    ok(store, "web02")
    done = settle_run(store, run, sweeper="w2@b", resume=resume, hold_s=5)
    assert done == Orphaned("r1", (), resumed=0)
    assert resume.calls == [("r1", 0)]
    # The next round, the slot is held: the batch is not sent again.
    assert settle_run(store, run, sweeper="w2@b", resume=resume, hold_s=5) is None
    assert resume.calls == [("r1", 0)]


def test_a_rolling_run_goes_on_also_when_the_lost_process_had_recorded_its_host(
    store: SqliteRunStore,
) -> None:
    # The pool process saved the host's result, then died before Celery heard of it:
    # the chord member failed all the same, and no callback comes.
    run = make_run(store, batches=(("web01", "web02"), ("web03", "web04")))
    ok(store, "web01")
    ok(store, "web02")
    resume = Resumer()
    assert settle_run(store, run, sweeper="w2@b", resume=resume, hold_s=5) is not None
    assert resume.calls == [("r1", 0)]


def test_only_a_prefork_worker_records_pool_losses() -> None:
    # Elsewhere a request's `worker_pid` is the worker's own pid (threads) or a
    # greenlet's id: it cannot tell which delivery held a host.
    from types import SimpleNamespace

    from celery.concurrency.prefork import TaskPool as Prefork
    from celery.concurrency.thread import TaskPool as Threads

    from fleet import pool_request

    try:
        pool_request._note_pool(SimpleNamespace(controller=SimpleNamespace(pool_cls=Prefork)))
        assert pool_request._prefork is True
        pool_request._note_pool(SimpleNamespace(controller=SimpleNamespace(pool_cls=Threads)))
        assert pool_request._prefork is False
        pool_request._note_pool(SimpleNamespace(pool_cls="prefork"))  # not resolved: no
        assert pool_request._prefork is False
    finally:
        pool_request._prefork = False
