"""fleet.runs: deadlines, task arguments, routing, run ids and the canvas (never sent)."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleet.canvas import queue_for, task_host
from fleet.command import ExecOptions
from fleet.errors import BackendError, UsageError
from fleet.inventory.hosts import DEFAULT_QUEUE, Host
from fleet.lifecycle import ASSUMED_SLOTS, RunRequest, default_deadline, new_run_id, run_host_job
from fleet.results import HostResult, RunRecord, Status, utc_now
from fleet.runs import build_canvas, follow_run
from fleet.settings import Settings
from fleet.store.sqlite_store import SqliteRunStore

EU = Host("web01", "10.0.0.1", user="deploy", queue="dc-eu", vars={"rack": 3}, env={"A": "1"})
MAIN = Host("db1", "10.0.1.1")


def test_default_deadline_grows_with_waves_of_hosts() -> None:
    options = ExecOptions(command_timeout=30, connect_timeout=5, auth_timeout=5)
    assert default_deadline(options, 1) == 40 + 60
    assert default_deadline(options, ASSUMED_SLOTS) == 40 + 60
    assert default_deadline(options, ASSUMED_SLOTS + 1) == 2 * 40 + 60


def test_task_host_drops_free_vars_and_keeps_connection_values() -> None:
    data = task_host(EU)
    assert "vars" not in data
    assert data["address"] == "10.0.0.1" and data["queue"] == "dc-eu" and data["env"] == {"A": "1"}
    assert Host.from_dict(data) == Host(**{**EU.to_dict(), "vars": {}, "groups": ()})


def test_queue_for_routes_by_host_queue_except_embedded() -> None:
    assert queue_for(EU, embedded=False) == "dc-eu"
    assert queue_for(MAIN, embedded=False) == DEFAULT_QUEUE
    assert queue_for(EU, embedded=True) == DEFAULT_QUEUE


def test_new_run_id_is_time_sortable_and_unique() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    for run_id in ids:
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id), run_id
    stamp = datetime.strptime(next(iter(ids))[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    assert abs(stamp.timestamp() - time.time()) < 5


def _run_and_request() -> tuple[RunRecord, RunRequest]:
    options = ExecOptions(command_timeout=7, env={"X": "y"})
    request = RunRequest("uptime", "web,db", (EU, MAIN), options)
    run = RunRecord(
        run_id="20260101-000000-abcdef",
        command="uptime",
        pattern="web,db",
        hosts=("web01", "db1"),
        created_at=utc_now(),
        deadline=time.time() + 100,
    )
    return run, request


def test_canvas_is_one_chord_with_a_routed_expiring_task_per_host() -> None:
    run, request = _run_and_request()
    canvas = build_canvas(run, request, embedded=False)
    members = list(canvas.tasks)
    assert [m.task for m in members] == ["fleet.run_on_host", "fleet.run_on_host"]
    expires = datetime.fromtimestamp(run.deadline, UTC)
    for member, host in zip(members, (EU, MAIN), strict=True):
        run_id, sent_host, command, options = member.args
        assert (run_id, command) == (run.run_id, "uptime")
        assert sent_host == task_host(host)
        # --env values never travel: names only (the worker reads them from the store)
        assert options["env"] == {"X": "***"}
        assert ExecOptions.from_dict(options) == replace(request.options, env={"X": "***"})
        assert member.options["expires"] == expires
    assert [m.options["queue"] for m in members] == ["dc-eu", DEFAULT_QUEUE]
    assert canvas.body.task == "fleet.aggregate"
    assert list(canvas.body.args) == [run.run_id]
    assert canvas.body.options["queue"] == DEFAULT_QUEUE
    assert canvas.body.options["expires"] == expires


def test_embedded_canvas_keeps_every_task_on_the_default_queue() -> None:
    run, request = _run_and_request()
    canvas = build_canvas(run, request, embedded=True)
    assert {m.options["queue"] for m in canvas.tasks} == {DEFAULT_QUEUE}


class OutageStore(SqliteRunStore):
    """Every read fails while `down` is set (a Redis restart seen by the follower)."""

    down = False

    def events(
        self, run_id: str, after: str = "0", block_ms: int = 0, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        if self.down:
            raise BackendError("run store at redis://x unreachable: Connection refused")
        return super().events(run_id, after, block_ms, count)


def _ok(host: Host, options: ExecOptions, command: str = "") -> HostResult:
    return HostResult(host=host.name, status=Status.OK, exit_code=0)


def test_follow_rides_out_a_store_outage(tmp_path: Path) -> None:
    store = OutageStore(tmp_path / "h.sqlite3")
    try:
        run, _request = _run_and_request()
        store.create_run(run, (EU, MAIN))
        store.down = True
        seen: list[int] = []

        def on_progress(_p: object) -> None:
            seen.append(1)

        # Down for the first calls: the follower waits instead of raising.
        assert follow_run(store, run.run_id, timeout=0.5, on_progress=on_progress) is None
        assert seen == []
        store.down = False
        for host in (EU, MAIN):
            run_host_job(
                store,
                run.run_id,
                host,
                "true",
                ExecOptions(),
                worker="w",
                execute=lambda h, _c, o: _ok(h, o),
            )
        report = follow_run(store, run.run_id, timeout=10)
        assert report is not None and len(report.ok) == 2
    finally:
        store.close()


def test_follow_finalizes_at_the_deadline_while_events_are_down(tmp_path: Path) -> None:
    store = OutageStore(tmp_path / "h.sqlite3")
    try:
        run, _request = _run_and_request()
        past = RunRecord(**{**run.to_dict(), "hosts": run.hosts, "deadline": time.time() + 0.2})
        store.create_run(past, (EU, MAIN))
        store.down = True
        # The deadline passes during the outage; finalizing needs the store too, and
        # the store's reads before `events` still work here, so finalize wins.
        report = follow_run(store, past.run_id, timeout=10, outage_grace_s=0.5)
        assert report is not None
        assert {r.status for r in report.results} == {Status.LOST}
    finally:
        store.close()


def test_follow_raises_when_the_store_stays_down_past_the_grace(tmp_path: Path) -> None:
    class DeadStore(OutageStore):
        def load_report(self, run_id: str) -> None:
            raise BackendError("run store at redis://x unreachable")

    store = DeadStore(tmp_path / "h.sqlite3")
    try:
        run, _request = _run_and_request()
        past = RunRecord(**{**run.to_dict(), "hosts": run.hosts, "deadline": time.time() + 0.2})
        store.create_run(past, (EU, MAIN))
        started = time.monotonic()
        with pytest.raises(BackendError):
            follow_run(store, past.run_id, timeout=30, outage_grace_s=0.5)
        assert time.monotonic() - started < 5
    finally:
        store.close()


# --- a deadline the user chose: the timeouts they did not choose give way --------------


def test_a_deadline_alone_shrinks_the_default_command_timeout() -> None:
    from fleet.lifecycle import fit_timeouts

    options = ExecOptions(command_timeout=300, connect_timeout=10, auth_timeout=10)
    fitted = fit_timeouts(options, 60, explicit=set())
    # 5 s (a tenth, at most 5 s) stay for the rest: a host stopped at its own timeout
    # reports `timeout` before the deadline would call it `lost`.
    assert (fitted.command_timeout, fitted.connect_timeout, fitted.auth_timeout) == (35, 10, 10)
    assert fit_timeouts(options, 400, explicit=set()) is options  # fits already


def test_a_very_short_deadline_shrinks_every_timeout_not_chosen() -> None:
    from fleet.lifecycle import fit_timeouts, host_budget

    options = ExecOptions(command_timeout=300, connect_timeout=10, auth_timeout=10)
    fitted = fit_timeouts(options, 5, explicit=set())
    assert host_budget(fitted) == pytest.approx(2.5)  # half of it stays for the rest
    assert fitted.connect_timeout < 10 and fitted.command_timeout > 0


def test_timeouts_the_user_chose_never_change_and_are_named_when_too_long() -> None:
    from fleet.lifecycle import fit_timeouts

    options = ExecOptions(command_timeout=30, connect_timeout=10, auth_timeout=10)
    fitted = fit_timeouts(options, 35, explicit={"command_timeout"})
    assert fitted.command_timeout == 30
    assert fitted.connect_timeout + fitted.auth_timeout == pytest.approx(1.5)  # 35-30-3.5
    with pytest.raises(UsageError, match=r"--deadline 25s .* you set \(--timeout 30s\)"):
        fit_timeouts(options, 25, explicit={"command_timeout"})
    with pytest.raises(UsageError, match=r"--timeout 30s \+ --connect-timeout 10s"):
        fit_timeouts(options, 20, explicit={"command_timeout", "connect_timeout"})


def test_chosen_timeouts_are_the_given_ones_and_those_set_in_the_environment() -> None:
    from fleet.lifecycle import chosen_timeouts

    assert chosen_timeouts(Settings.load(env={})) == set()
    assert chosen_timeouts(Settings.load(env={}), {"command_timeout"}) == {"command_timeout"}
    env = {"FLEET_AUTH_TIMEOUT": "3"}
    assert chosen_timeouts(Settings.load(env=env)) == {"auth_timeout"}
