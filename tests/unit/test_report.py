"""Renderings of a RunReport: text, JSON, HTML, runs table, exit code, atomic writes."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fleet import report as render
from fleet.errors import EXIT_HOSTS_FAILED, EXIT_OK, FleetError
from fleet.report import files as report_files
from fleet.report.common import fold_hosts
from fleet.results import HostResult, RunRecord, RunReport, Status

SGR = re.compile(r"\x1b\[[0-9;]*m")  # rich's own styling, the only escapes allowed
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
EVIL = "pwn\x1b]0;owned\x07\x1b[2J\rhidden\u202eevil\x9b31m\n"

RESULT_KEYS = [
    "host",
    "address",
    "status",
    "exit_code",
    "exit_signal",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "stdout_bytes",
    "stderr_bytes",
    "stdout_kept_bytes",
    "stderr_kept_bytes",
    "duration_s",
    "started_at",
    "finished_at",
    "error",
    "worker",
    "connection_reused",
    "transfer",
    "batch",
]
TOP_KEYS = [
    "run_id",
    "command",
    "pattern",
    "state",
    "started_at",
    "finished_at",
    "counts",
    "hosts_total",
    "batches",
    "max_fail",
    "fanout",
    "results",
]


def make_report(results: list[HostResult], hosts: tuple[str, ...] | None = None) -> RunReport:
    run = RunRecord(
        run_id="r-42",
        command="uptime",
        pattern="web",
        hosts=hosts if hosts is not None else tuple(r.host for r in results),
        created_at="2024-01-01T10:00:00.000+00:00",
        deadline=0.0,
        state="finished",
        finished_at="2024-01-01T10:00:03.200+00:00",
    )
    return RunReport.assemble(run, results)


def ok(host: str, out: str = " up 3 days\n", duration: float = 0.5) -> HostResult:
    return HostResult(host, Status.OK, exit_code=0, stdout=out, duration_s=duration)


def fleet_of_twelve() -> RunReport:
    results = [ok(f"web{i:02d}", duration=0.1 * i) for i in (1, 2, 3, 4, 7)]
    results += [ok(f"db{i}", "other\n", duration=1.0 + i) for i in (1, 2, 3, 4, 5)]
    results.append(
        HostResult("web05", Status.UNREACHABLE, address="10.0.0.5", error="connection refused")
    )
    results.append(
        HostResult(
            "web06", Status.FAILED, exit_code=3, stdout="oops\n", stderr="bad\n", duration_s=9.0
        )
    )
    return make_report(results)


# --- text ----------------------------------------------------------------------------


def test_identical_outputs_are_gathered_under_folded_host_lists() -> None:
    text = render.render_text(fleet_of_twelve())
    assert "---------------\nweb[01-04,07] (5)\n---------------\n up 3 days\n" in text
    assert "db[1-5] (5)\n---------------\nother\n" in text
    assert "web06 (1) exit 3\n" in text
    assert text.index("oops\n") < text.index("[stderr]\nbad\n")  # stderr after stdout, marked


def test_failures_list_reasons_and_summary_is_last() -> None:
    text = render.render_text(fleet_of_twelve())
    failures = text[text.index("failures:") :]
    assert re.search(r"\n  web06 +failed +exit 3\n", failures)
    assert re.search(r"\n  web05 +unreachable +connection refused\n", failures)
    assert text.endswith("12 hosts: 10 ok, 1 failed, 1 unreachable in 3.2 s\n")


def test_failures_sharing_a_reason_are_folded_into_one_line() -> None:
    results = [
        HostResult(f"n{i}", Status.AUTH_FAILED, error="publickey denied") for i in range(1, 9)
    ]
    text = render.render_text(make_report(results))
    assert re.search(r"\n  n\[1-8\] +auth_failed +publickey denied\n", text)
    verbose = render.render_text(make_report(results), verbose=True)
    assert len(re.findall(r"auth_failed +publickey denied", verbose)) == 8


def test_slowest_hosts_shown_for_many_hosts_only() -> None:
    text = render.render_text(fleet_of_twelve())
    slow = text[text.index("slowest:") :].splitlines()[1:6]
    assert [line.split()[0] for line in slow] == ["web06", "db5", "db4", "db3", "db2"]
    assert "9.0 s" in slow[0]
    assert "slowest:" not in render.render_text(make_report([ok("a"), ok("b")]))


def test_summary_line() -> None:
    assert render.render_summary_line(fleet_of_twelve()) == (
        "12 hosts: 10 ok, 1 failed, 1 unreachable in 3.2 s"
    )
    one = make_report([ok("a")])
    assert render.render_summary_line(one).startswith("1 host: 1 ok")
    pending = make_report([ok("a")], hosts=("a", "b", "c"))
    assert render.render_summary_line(pending).startswith("3 hosts: 1 ok, 2 pending")


def test_truncation_is_noted() -> None:
    big = HostResult(
        "web01",
        Status.OK,
        exit_code=0,
        stdout="x" * 1048576,
        stdout_truncated=True,
        stdout_bytes=5242880,
    )
    text = render.render_text(make_report([big]))
    assert "(stdout truncated: 5242880 bytes sent, 1048576 kept)" in text


def test_truncation_note_says_the_bytes_kept_not_the_decoded_text_size() -> None:
    # 1 MiB of invalid UTF-8 kept: decoded, each byte is U+FFFD (3 bytes in UTF-8).
    binary = HostResult(
        "web01", Status.OK, exit_code=0, stdout="\ufffd" * 1048576, stdout_truncated=True,
        stdout_bytes=2097152, stdout_kept_bytes=1048576,
    )  # fmt: skip
    text = render.render_text(make_report([binary]))
    assert "(stdout truncated: 2097152 bytes sent, 1048576 kept)" in text


def test_no_output_and_timeouts_are_said() -> None:
    results = [
        ok("a", out=""),
        HostResult("b", Status.TIMEOUT, stdout="so far", error="timed out after 2 s"),
    ]
    text = render.render_text(make_report(results))
    assert "a (1)\n---------------\n(no output)\n" in text
    assert "b (1) timed out\n" in text


def test_color_false_has_no_escape_sequences_at_all() -> None:
    report = fleet_of_twelve()
    text = render.render_text(report, color=False, verbose=True)
    assert "\x1b" not in text
    assert not CONTROL.search(text)


def test_color_true_is_styled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)  # rich honours it even when told to colour
    assert SGR.search(render.render_text(fleet_of_twelve(), color=True))


@pytest.mark.parametrize("color", [False, True])
def test_host_text_cannot_inject_escapes(color: bool) -> None:
    results = [
        HostResult(
            "evil\x1b[31m\nhost",
            Status.FAILED,
            exit_code=1,
            stdout=EVIL,
            stderr=EVIL,
            duration_s=1.0,
            worker="w\x1b[0m",
            error="err\x1b]52;c;Y3VybCBldmlsfHNo\x07\nFAKE  ok",
            address="\u202e1.0.0.10",
        ),
        HostResult("plain", Status.ERROR, error=EVIL),
        ok("[bold red]markup[/]"),
    ]
    text = render.render_text(make_report(results), color=color, verbose=True)
    visible = SGR.sub("", text)
    assert "\x1b" not in visible
    assert not CONTROL.search(visible)
    assert "pwn\\x1b]0;owned\\x07\\x1b[2J\\rhidden\\u202eevil\\x9b31m" in visible
    assert "[bold red]markup[/]" in visible  # host text is never read as rich markup
    assert "\nFAKE  ok" not in visible  # an error message cannot forge a line


def test_weird_host_names_are_listed_not_parsed() -> None:
    results = [ok("@all"), ok("a,b"), ok("x[1-3]"), ok("web1"), ok("web2")]
    header = render.render_text(make_report(results)).splitlines()[1]
    assert header.startswith("web[1-2],")
    for name in ("@all", "a,b", "x[1-3]"):
        assert name in header
    assert header.endswith("(5)")


def test_fold_hosts_keeps_padding_distinct() -> None:
    assert fold_hosts(["web01", "web1"]) in {"web[1,01]", "web[01,1]"}
    assert fold_hosts(["n1", "n2", "n3", "n5"]) == "n[1-3,5]"


# --- JSON ----------------------------------------------------------------------------


def test_json_contract_keys_exactly() -> None:
    doc = json.loads(render.render_json(fleet_of_twelve()))
    assert list(doc) == TOP_KEYS
    assert set(doc["counts"]) == {s.value for s in Status}
    assert doc["counts"]["ok"] == 10 and doc["counts"]["lost"] == 0
    assert doc["hosts_total"] == 12
    for row in doc["results"]:
        assert list(row) == RESULT_KEYS
    assert doc["run_id"] == "r-42" and doc["state"] == "finished"
    assert doc["started_at"] == "2024-01-01T10:00:00.000+00:00"


def test_json_results_follow_the_run_host_order() -> None:
    report = RunReport(
        run=make_report([], hosts=("c", "a", "b")).run,
        results=(ok("a"), ok("b"), ok("c")),
    )
    assert [r["host"] for r in json.loads(render.render_json(report))["results"]] == ["c", "a", "b"]


def test_json_is_one_document_ending_with_newline_and_matches_dict() -> None:
    report = fleet_of_twelve()
    text = render.render_json(report)
    assert text.endswith("}\n")
    assert json.loads(text) == render.report_json_dict(report)


def test_json_survives_lone_surrogates_and_nan() -> None:
    report = make_report(
        [HostResult("h\udcff", Status.OK, exit_code=0, stdout="a\udcffb", duration_s=float("nan"))]
    )
    text = render.render_json(report)
    raw = text.encode("utf-8")  # strict: must not raise
    doc = json.loads(raw)
    assert doc["results"][0]["stdout"] == "a\ufffdb"
    assert doc["results"][0]["duration_s"] is None
    assert "NaN" not in text


def test_json_is_ascii_safe_and_decodes_to_the_same_text() -> None:
    report = make_report([ok("h", out="日本 ✓\n")])
    text = render.render_json(report)
    assert text.isascii() and "\\u65e5\\u672c \\u2713" in text
    assert json.loads(text)["results"][0]["stdout"] == "日本 ✓\n"


# --- HTML ----------------------------------------------------------------------------


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)


def test_html_is_self_contained() -> None:
    page = render.render_html(fleet_of_twelve())
    for forbidden in ("http://", "https://", "src=", "<script", "<link", "@import", "url("):
        assert forbidden not in page
    assert "Content-Security-Policy" in page
    assert "default-src 'none'; style-src 'unsafe-inline'; img-src data:" in page
    parser = _Collect()
    parser.feed(page)
    assert "svg" in parser.tags and "table" in parser.tags and "pre" in parser.tags
    assert parser.tags.count("svg") == 2  # status chart and duration histogram
    assert not [name for name, _ in parser.attrs if name.startswith("on")]  # no handlers
    assert "<title>fleet: uptime (r-42)</title>" in page
    assert "web[01-04,07] (5)" in page


def test_html_escapes_host_text() -> None:
    payload = "<script>alert(1)</script>"
    results = [
        HostResult(
            f'h"{payload}',
            Status.FAILED,
            exit_code=1,
            stdout=payload + "\n",
            stderr=payload,
            error=payload,
            worker=payload,
            address='"><img src=x onerror=alert(1)>',
            duration_s=0.3,
        ),
        ok("a"),
    ]
    page = render.render_html(make_report(results))
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page and "&quot;&gt;&lt;img" in page
    parser = _Collect()
    parser.feed(page)
    assert "script" not in parser.tags and "img" not in parser.tags


def test_html_handles_empty_and_odd_reports() -> None:
    empty = render.render_html(make_report([], hosts=("a",)))
    assert "No results" in empty and "No timings" in empty
    odd = render.render_html(make_report([ok("z", out="\udcff\x1b[2J", duration=0.0)]))
    odd.encode("utf-8")
    assert "\x1b" not in odd


# --- exit code, runs table, atomic writes --------------------------------------------------


def test_exit_code() -> None:
    assert render.exit_code(make_report([ok("a"), ok("b")])) == EXIT_OK == 0
    assert render.exit_code(fleet_of_twelve()) == EXIT_HOSTS_FAILED == 1
    assert render.exit_code(make_report([ok("a")], hosts=("a", "b"))) == 1  # b has no result
    assert render.exit_code(make_report([HostResult("a", Status.CANCELLED)])) == 1


def test_runs_table_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    report = fleet_of_twelve()
    runs = [
        report.run,
        RunRecord("r-1", "echo \x1b[2J", "db", ("db1",), "2024-01-01T09:00:00+00:00", 0.0),
    ]
    counts = {"r-42": report.counts()}
    table = render.render_runs(runs, counts)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["RUN", "ID"]
    assert "r-42" in lines[1] and "10 ok, 1 failed, 1 unreachable" in lines[1]
    assert "2024-01-01 10:00:00" in lines[1]
    assert "echo \\x1b[2J" in lines[2] and "\x1b" not in table
    assert render.render_runs([]) == "no runs\n"
    assert SGR.search(render.render_runs(runs, counts, color=True))
    doc = json.loads(render.runs_json(runs, counts))
    assert [r["run_id"] for r in doc] == ["r-42", "r-1"]
    assert doc[0]["counts"]["ok"] == 10 and doc[1]["counts"]["ok"] == 0
    assert doc[0]["hosts_total"] == 12


def test_write_atomically_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    os.chmod(target, 0o644)
    render.write_atomically(target, "new ✓\udcff")
    assert target.read_text(encoding="utf-8") == "new ✓?"
    assert (target.stat().st_mode & 0o777) == 0o644
    assert os.listdir(tmp_path) == ["report.html"]
    fresh = tmp_path / "fresh.json"
    render.write_atomically(fresh, "{}\n")
    assert fresh.read_text() == "{}\n"
    assert (fresh.stat().st_mode & 0o777) == 0o600


def test_write_atomically_leaves_nothing_on_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")

    def broken_replace(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_files.os, "replace", broken_replace)
    with pytest.raises(FleetError, match=r"cannot write .*report\.html: No space left"):
        render.write_atomically(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.html"]


def test_write_atomically_to_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="cannot write"):
        render.write_atomically(tmp_path / "nope" / "r.html", "x")
    assert not (tmp_path / "nope").exists()


def test_report_module_imports_no_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fleet.report, fleet.report.html, fleet.textsafe, fleet.results\n"
        "bad = [m for m in ('celery', 'paramiko', 'redis', 'kombu') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
