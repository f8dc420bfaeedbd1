"""fleet.lifecycle against a real SQLite run store and a scripted execute function."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet.command import ExecOptions
from fleet.errors import BackendError
from fleet.inventory.hosts import Host
from fleet.lifecycle import AlreadyClaimed, cancel_run, finalize_run, run_host_job
from fleet.results import HostResult, RunRecord, Status, utc_now
from fleet.store.sqlite_store import SqliteRunStore

HOSTS = (Host("web01", "10.0.0.1"), Host("web02", "10.0.0.2"), Host("web03", "10.0.0.3"))


@dataclass
class ScriptedExecute:
    """Records every call; answers `ok` with the host's name on stdout."""

    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def __call__(self, host: Host, command: str, options: ExecOptions) -> HostResult:
        self.calls.append((host.name, command, dict(options.env)))
        return HostResult(
            host=host.name, status=Status.OK, address=host.address, exit_code=0, stdout=host.name
        )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRunStore]:
    s = SqliteRunStore(tmp_path / "history.sqlite3")
    yield s
    s.close()


def new_run(store: SqliteRunStore, run_id: str = "r1", deadline_in: float = 600.0) -> RunRecord:
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


def job(store: SqliteRunStore, host: Host, execute: ScriptedExecute, **kw: float) -> HostResult:
    return run_host_job(
        store, "r1", host, "uptime", ExecOptions(), worker="w1@node", execute=execute, **kw
    )


def test_runs_once_records_result_and_exports_run_id(store: SqliteRunStore) -> None:
    new_run(store)
    execute = ScriptedExecute()
    result = job(store, HOSTS[0], execute)
    assert result.status is Status.OK and result.worker == "w1@node"
    assert [c[0] for c in execute.calls] == ["web01"]
    assert execute.calls[0][2]["FLEET_RUN_ID"] == "r1"
    assert execute.calls[0][2]["FLEET_HOST"] == "web01"
    assert store.results("r1")["web01"].status is Status.OK
    kinds = [e["type"] for _id, e in store.events("r1")]
    assert kinds == ["started", "result"]


def test_second_delivery_is_refused_and_never_executes(store: SqliteRunStore) -> None:
    new_run(store)
    execute = ScriptedExecute()
    job(store, HOSTS[0], execute)
    with pytest.raises(AlreadyClaimed) as refused:
        job(store, HOSTS[0], execute)
    assert refused.value.host == "web01" and not refused.value.closed
    assert len(execute.calls) == 1
    assert [e["type"] for _id, e in store.events("r1")][-1] == "duplicate"
    # The first delivery's result is the one that counts.
    assert store.results("r1")["web01"].status is Status.OK


def test_cancelled_run_refuses_without_executing(store: SqliteRunStore) -> None:
    new_run(store)
    assert cancel_run(store, "r1")
    execute = ScriptedExecute()
    # The cancel claimed every unstarted host: a message arriving later finds the host
    # closed, and the recorded status stays `cancelled`.
    with pytest.raises(AlreadyClaimed) as refused:
        job(store, HOSTS[1], execute)
    assert refused.value.closed
    assert execute.calls == []
    assert store.results("r1")["web02"].status is Status.CANCELLED


def test_a_claimed_host_of_a_cancelled_run_is_lost_only_at_the_deadline(
    store: SqliteRunStore,
) -> None:
    run = new_run(store)
    assert store.claim_host("r1", "web02", "w9@node")  # a worker took it, then died
    assert cancel_run(store, "r1")
    assert finalize_run(store, "r1") is None  # web02 is its claimer's to settle, for now
    report = finalize_run(store, "r1", now=run.deadline + 1)
    assert report is not None
    by_host = {r.host: r for r in report.results}
    assert by_host["web01"].status is Status.CANCELLED
    assert by_host["web02"].status is Status.LOST
    assert "started" in (by_host["web02"].error or "")


def test_a_host_running_when_cancelled_keeps_its_real_result(store: SqliteRunStore) -> None:
    new_run(store)

    def cancel_while_running(host: Host, command: str, options: ExecOptions) -> HostResult:
        assert cancel_run(store, "r1")
        return HostResult(host=host.name, status=Status.OK, exit_code=0)

    result = job(store, HOSTS[0], cancel_while_running)
    assert result.status is Status.OK
    assert store.results("r1")["web01"].status is Status.OK
    report = finalize_run(store, "r1")
    assert report is not None and report.run.state == "cancelled"
    assert {r.host: r.status for r in report.results}["web01"] is Status.OK


def test_run_past_its_deadline_refuses_as_lost(store: SqliteRunStore) -> None:
    new_run(store, deadline_in=-1.0)
    execute = ScriptedExecute()
    assert job(store, HOSTS[0], execute).status is Status.LOST
    assert execute.calls == []


def test_unknown_run_refuses_and_stores_nothing(store: SqliteRunStore) -> None:
    execute = ScriptedExecute()
    result = run_host_job(
        store, "nope", HOSTS[0], "true", ExecOptions(), worker="w", execute=execute
    )
    assert result.status is Status.LOST and execute.calls == []


class FlakyStore(SqliteRunStore):
    """The store is unreachable for the first `failures` saves (a Redis restart)."""

    failures = 2

    def save_result(self, run_id: str, result: HostResult) -> bool:
        if self.failures:
            self.failures -= 1
            raise BackendError("run store at redis://x unreachable: restarting")
        return super().save_result(run_id, result)


def test_save_is_retried_after_an_outage_without_running_again(tmp_path: Path) -> None:
    flaky = FlakyStore(tmp_path / "h.sqlite3")
    try:
        new_run(flaky)
        execute = ScriptedExecute()
        result = job(flaky, HOSTS[0], execute, save_retry_s=5.0)
        assert result.status is Status.OK and len(execute.calls) == 1
        assert flaky.results("r1")["web01"].status is Status.OK
    finally:
        flaky.close()


def test_save_gives_up_quietly_and_the_deadline_decides(tmp_path: Path) -> None:
    flaky = FlakyStore(tmp_path / "h.sqlite3")
    flaky.failures = 1000
    try:
        new_run(flaky)
        execute = ScriptedExecute()
        result = job(flaky, HOSTS[0], execute, save_retry_s=0.3)
        assert result.status is Status.OK and len(execute.calls) == 1
        assert flaky.results("r1") == {}
    finally:
        flaky.close()


def test_finalize_marks_missing_hosts_lost_after_the_deadline(store: SqliteRunStore) -> None:
    run = new_run(store)
    job(store, HOSTS[0], ScriptedExecute())
    assert finalize_run(store, "r1") is None  # before the deadline: still waiting
    report = finalize_run(store, "r1", now=run.deadline + 1)
    assert report is not None
    assert {r.host: r.status for r in report.results} == {
        "web01": Status.OK,
        "web02": Status.LOST,
        "web03": Status.LOST,
    }
    assert report.results[1].address == "10.0.0.2"
    assert store.get_run("r1").state == "finished"
    # Idempotent: a second finalizer (the chord callback, `fleet report`) changes nothing.
    again = finalize_run(store, "r1", now=run.deadline + 5)
    assert again is not None
    assert [(r.host, r.status) for r in again.results] == [
        (r.host, r.status) for r in report.results
    ]
    assert [e["type"] for _id, e in store.events("r1")].count("finished") == 2


def test_finalize_completes_as_soon_as_every_host_has_a_result(store: SqliteRunStore) -> None:
    new_run(store)
    execute = ScriptedExecute()
    for host in HOSTS:
        job(store, host, execute)
    report = finalize_run(store, "r1")
    assert report is not None and len(report.ok) == 3
    assert store.load_report("r1") == report


def test_cancel_marks_unclaimed_hosts_cancelled_and_waits_for_claimed(
    store: SqliteRunStore,
) -> None:
    run = new_run(store)
    # web01 is claimed (its command is running) when the run is cancelled.
    assert store.claim_host("r1", "web01", "w1")
    assert cancel_run(store, "r1")
    results = store.results("r1")
    assert results["web02"].status is Status.CANCELLED
    assert results["web03"].status is Status.CANCELLED
    assert "web01" not in results
    assert finalize_run(store, "r1") is None
    assert not cancel_run(store, "r1")  # already cancelled
    report = finalize_run(store, "r1", now=run.deadline + 1)
    assert report is not None
    assert report.results[0].status is Status.LOST
    assert store.get_run("r1").state == "cancelled"


def test_cancel_of_a_finished_run_is_refused(store: SqliteRunStore) -> None:
    new_run(store)
    for host in HOSTS:
        job(store, host, ScriptedExecute())
    assert finalize_run(store, "r1") is not None
    assert not cancel_run(store, "r1")
    assert store.get_run("r1").state == "finished"
