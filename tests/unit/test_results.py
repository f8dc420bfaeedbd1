"""Result types: dict round trips, the report's questions, gathering, assembly."""

from __future__ import annotations

import json

import pytest

from fleet.errors import EXIT_HOSTS_FAILED, FleetError
from fleet.results import (
    STATUS_ORDER,
    HostResult,
    HostsFailedError,
    OutputGroup,
    RunRecord,
    RunReport,
    Status,
    gather_outputs,
    utc_now,
)


def record(hosts: tuple[str, ...] = ("web01", "web02", "web03"), **kw: object) -> RunRecord:
    values: dict[str, object] = {
        "run_id": "r-1",
        "command": "uptime",
        "pattern": "web",
        "hosts": hosts,
        "created_at": "2024-01-01T10:00:00.000+00:00",
        "deadline": 1704103200.5,
    }
    values.update(kw)
    return RunRecord(**values)  # type: ignore[arg-type]


def full_result() -> HostResult:
    return HostResult(
        host="web01",
        status=Status.TIMEOUT,
        address="10.0.0.1",
        exit_code=None,
        stdout="partial ünïcødé\n\udcff",
        stderr="warn\n",
        stdout_truncated=True,
        stderr_truncated=False,
        stdout_bytes=5_000_000,
        stderr_bytes=5,
        started_at="2024-01-01T10:00:00.000+00:00",
        finished_at="2024-01-01T10:00:02.000+00:00",
        duration_s=2.0,
        error="command timed out after 2 s",
        worker="w1@node",
        connection_reused=True,
        remote_kill_confirmed=False,
    )


def via_json(data: object) -> object:
    return json.loads(json.dumps(data))


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("status", list(Status))
def test_host_result_round_trip(status: Status) -> None:
    result = HostResult(host="h", status=status, exit_code=1, duration_s=0.25)
    assert HostResult.from_dict(via_json(result.to_dict())) == result  # type: ignore[arg-type]


def test_host_result_round_trip_all_fields() -> None:
    result = full_result()
    data = result.to_dict()
    assert data["status"] == "timeout"
    assert HostResult.from_dict(via_json(data)) == result  # type: ignore[arg-type]


def test_host_result_from_dict_ignores_unknown_keys() -> None:
    data = HostResult(host="h", status=Status.OK).to_dict() | {"future_field": 1}
    assert HostResult.from_dict(data) == HostResult(host="h", status=Status.OK)


def test_host_result_rejects_unknown_status() -> None:
    with pytest.raises(ValueError):
        HostResult.from_dict({"host": "h", "status": "exploded"})


def test_run_record_round_trip() -> None:
    run = record(
        state="finished",
        user="ops",
        options={"timeout": 30, "env": {"A": "1"}, "become": True},
        finished_at="2024-01-01T10:00:05.000+00:00",
    )
    assert RunRecord.from_dict(via_json(run.to_dict())) == run  # type: ignore[arg-type]


def test_run_report_round_trip() -> None:
    report = RunReport(
        run=record(),
        results=(full_result(), HostResult("web02", Status.OK, exit_code=0, stdout="x")),
    )
    assert RunReport.from_dict(via_json(report.to_dict())) == report  # type: ignore[arg-type]


def test_results_are_frozen() -> None:
    result = HostResult(host="h", status=Status.OK)
    with pytest.raises(AttributeError):
        result.status = Status.FAILED  # type: ignore[misc]
    assert result.with_worker("w2").worker == "w2"
    assert result.worker is None


def test_not_run_and_utc_now() -> None:
    lost = HostResult.not_run("web09", Status.LOST, "no result by the deadline", "10.0.0.9")
    assert (lost.status, lost.error, lost.address, lost.exit_code) == (
        Status.LOST,
        "no result by the deadline",
        "10.0.0.9",
        None,
    )
    assert lost.finished_at is not None and lost.finished_at.endswith("+00:00")
    assert utc_now().endswith("+00:00")


def test_status_properties_and_order() -> None:
    assert Status.OK.is_ok and not Status.FAILED.is_ok
    assert set(STATUS_ORDER) == set(Status) and len(STATUS_ORDER) == len(Status)
    assert STATUS_ORDER[0] is Status.FAILED and STATUS_ORDER[-1] is Status.OK


# --- the report's questions --------------------------------------------------------------


def mixed_report() -> RunReport:
    hosts = ("web01", "web02", "web03", "web04", "db1")
    return RunReport(
        run=record(hosts),
        results=(
            HostResult("web01", Status.OK, exit_code=0, stdout="same\n", duration_s=0.2),
            HostResult("web02", Status.FAILED, exit_code=2, stdout="bad\n", duration_s=1.5),
            HostResult("web03", Status.OK, exit_code=0, stdout="same\n", duration_s=0.9),
            HostResult("web04", Status.UNREACHABLE, error="connection refused"),
            HostResult("db1", Status.OK, exit_code=0, stdout="same\n", duration_s=0.4),
        ),
    )


def test_ok_failed_counts_by_status() -> None:
    report = mixed_report()
    assert [r.host for r in report.ok] == ["web01", "web03", "db1"]
    assert [r.host for r in report.failed] == ["web02", "web04"]
    assert report.counts() == {"failed": 1, "unreachable": 1, "ok": 3}
    assert list(report.counts()) == ["failed", "unreachable", "ok"]  # worst news first
    by_status = report.by_status()
    assert list(by_status) == [Status.FAILED, Status.UNREACHABLE, Status.OK]
    assert [r.host for r in by_status[Status.OK]] == ["web01", "web03", "db1"]
    assert report.is_complete


def test_slowest_skips_untimed_hosts() -> None:
    report = mixed_report()
    assert [r.host for r in report.slowest(2)] == ["web02", "web03"]
    assert [r.host for r in report.slowest()] == ["web02", "web03", "db1", "web01"]


def test_gathered_groups_identical_output_largest_first() -> None:
    groups = mixed_report().gathered()
    assert groups == (
        OutputGroup(hosts=("db1", "web01", "web03"), stdout="same\n", stderr="", exit_code=0),
        OutputGroup(hosts=("web02",), stdout="bad\n", stderr="", exit_code=2),
    )


def test_gather_distinguishes_stderr_exit_code_and_stream_boundary() -> None:
    results = [
        HostResult("a", Status.OK, exit_code=0, stdout="x", stderr=""),
        HostResult("b", Status.OK, exit_code=0, stdout="", stderr="x"),
        HostResult("c", Status.FAILED, exit_code=1, stdout="x", stderr=""),
        HostResult("d", Status.OK, exit_code=0, stdout="x\0", stderr=""),
        HostResult("e", Status.OK, exit_code=0, stdout="x", stderr=""),
        HostResult("f", Status.OK, exit_code=0, stdout="\udcff", stderr=""),  # no crash
    ]
    groups = gather_outputs(results)
    assert [g.hosts for g in groups] == [("a", "e"), ("b",), ("c",), ("d",), ("f",)]


def test_gather_leaves_out_hosts_that_did_not_run() -> None:
    results = [
        HostResult("a", Status.UNREACHABLE, error="refused"),
        HostResult("b", Status.CANCELLED),
        HostResult("c", Status.TIMEOUT, stdout="so far"),
    ]
    assert [g.hosts for g in gather_outputs(results)] == [("c",)]


def test_assemble_orders_by_run_hosts_and_leaves_out_missing() -> None:
    run = record(("web03", "web01", "web02"))
    results = [
        HostResult("web01", Status.OK),
        HostResult("web03", Status.FAILED, exit_code=1),
        HostResult("stranger", Status.OK),  # not in the run: dropped
    ]
    report = RunReport.assemble(run, results)
    assert [r.host for r in report.results] == ["web03", "web01"]
    assert not report.is_complete


def test_raise_on_error() -> None:
    RunReport(run=record(("a",)), results=(HostResult("a", Status.OK),)).raise_on_error()
    report = mixed_report()
    with pytest.raises(HostsFailedError) as caught:
        report.raise_on_error()
    assert isinstance(caught.value, FleetError)
    assert caught.value.exit_code == EXIT_HOSTS_FAILED
    assert caught.value.report is report
    assert str(caught.value) == "2 host(s) not ok: web02, web04"


def test_raise_on_error_names_at_most_five() -> None:
    hosts = tuple(f"h{i}" for i in range(7))
    report = RunReport(run=record(hosts), results=tuple(HostResult(h, Status.LOST) for h in hosts))
    expected = r"7 host\(s\) not ok: h0, h1, h2, h3, h4 and 2 more"
    with pytest.raises(HostsFailedError, match=expected):
        report.raise_on_error()
