"""CLI behaviour that needs no services: parsing, exit codes, error lines, import weight."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.cli import main
from fleet.cli_common import parse_env as _parse_env
from fleet.errors import UsageError

REPO = Path(__file__).resolve().parents[2]

INVENTORY = """
defaults: {user: deploy}
groups:
  web:
    hosts:
      web[01-03]: {}
    queue: dc-eu
  local:
    hosts:
      localhost: {connection: local}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def test_hosts_lists_resolved_hosts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = write(tmp_path, INVENTORY)
    assert main(["hosts", "web", "-i", str(inv)]) == 0
    out = capsys.readouterr().out
    assert "web01" in out and "web03" in out and "dc-eu" in out and "deploy" in out


def test_hosts_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = write(tmp_path, INVENTORY)
    assert main(["hosts", "--group", "web:!web02", "-i", str(inv), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [h["name"] for h in doc] == ["web01", "web03"]
    assert doc[0]["queue"] == "dc-eu" and doc[0]["port"] == 22


def test_inventory_from_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_INVENTORY", str(write(tmp_path, INVENTORY)))
    assert main(["hosts", "local"]) == 0
    assert "localhost" in capsys.readouterr().out


def test_bad_inventory_prints_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write(
        tmp_path,
        "groups:\n  web:\n    hosts:\n      web05: {port: abc}\n"
        "    colour: red\n    children: [wbe]\n",
    )
    assert main(["hosts", "web", "-i", str(inv)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert len(lines) >= 3
    assert all(line.startswith("fleet: ") and "inventory.yaml" in line for line in lines)
    assert "groups.web.hosts.web05.port" in err
    assert "groups.web" in err and "colour" in err
    assert "wbe" in err
    assert "Traceback" not in err


def test_unknown_group_exits_2_naming_known_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write(tmp_path, INVENTORY)
    assert main(["hosts", "wbe", "-i", str(inv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wbe" in err and "web" in err and "local" in err


def test_missing_inventory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hosts", "web", "-i", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.yaml" in err


def test_run_with_empty_selection_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write(tmp_path, INVENTORY)
    assert main(["run", "true", "--group", "web:&local", "-i", str(inv)]) == 2
    assert "matched no hosts" in capsys.readouterr().err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert main(["run", "x", "--group", "web", "--timeout", "-1"]) == 2


def test_worker_without_broker_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker"]) == 2
    assert "FLEET_BROKER_URL" in capsys.readouterr().err


def test_env_parsing() -> None:
    assert _parse_env(["A=1", "B_2=x=y", "C="]) == {"A": "1", "B_2": "x=y", "C": ""}
    for bad in ["A", "1A=x", "A-B=1", "=x", "A B=1"]:
        with pytest.raises(UsageError):
            _parse_env([bad])


@pytest.mark.parametrize("argv", [["--help"], ["hosts", "local"]])
def test_help_and_hosts_do_not_import_celery(tmp_path: Path, argv: list[str]) -> None:
    inv = write(tmp_path, INVENTORY)
    code = (
        "import sys; from fleet.cli import main; rc = main(sys.argv[1:]);"
        "bad = [m for m in ('celery', 'kombu', 'paramiko', 'redis') if m in sys.modules];"
        "assert not bad, bad; raise SystemExit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv, *(["-i", str(inv)] if argv[0] == "hosts" else [])],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_common_options_work_before_and_after_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write(tmp_path, INVENTORY)
    assert main(["-i", str(inv), "hosts", "local"]) == 0
    assert "localhost" in capsys.readouterr().out
    assert main(["hosts", "local", "-i", str(inv)]) == 0
    assert "localhost" in capsys.readouterr().out
    assert main(["-i", str(tmp_path / "nope.yaml"), "hosts", "local"]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_deadline_shorter_than_one_hosts_limits_is_refused_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write(tmp_path, INVENTORY)
    marker = tmp_path / "ran"
    argv = ["run", f"touch {marker}", "--group", "local", "-i", str(inv), "--deadline", "5"]
    argv += ["--timeout", "60"]  # only a timeout the user chose can make a deadline too short
    assert main(argv) == 2
    assert "--deadline" in capsys.readouterr().err
    assert not marker.exists()


def test_unwritable_html_path_is_refused_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write(tmp_path, INVENTORY)
    marker = tmp_path / "ran"
    html = tmp_path / "missing" / "r.html"
    argv = ["run", f"touch {marker}", "--group", "local", "-i", str(inv), "--html", str(html)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--html" in err and "does not exist" in err
    assert not marker.exists()


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deep_nesting_is_one_line_naming_the_file_whichever_parser_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], depth: int
) -> None:
    inv = write(tmp_path, "defaults: {x: " + "[" * depth + "]" * depth + "}\n")
    assert main(["hosts", "all", "-i", str(inv)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"fleet: {inv}: ") and "nested deeper than 64 levels" in err[0]


def test_worker_without_result_backend_for_rabbitmq_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_BROKER_URL", "amqp://guest:secret@127.0.0.1:1//")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FLEET_RESULT_BACKEND is not set" in err
    assert "secret" not in err


def test_run_with_rabbitmq_and_no_result_backend_is_refused_before_publishing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 1: nothing listens, so reaching the broker at all would be a different error.
    monkeypatch.setenv("FLEET_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//")
    inv = write(tmp_path, INVENTORY)
    assert main(["run", "true", "-g", "local", "-i", str(inv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FLEET_RESULT_BACKEND is not set" in err


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_worker_bad_concurrency_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "-c", value]) == 2
    assert "concurrency" in capsys.readouterr().err


def test_a_deadline_alone_is_accepted_and_chosen_timeouts_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write(tmp_path, INVENTORY)
    assert main(["run", "true", "-g", "local", "-i", str(inv), "--deadline", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["ok"] == 1
    argv = ["run", "true", "-g", "local", "-i", str(inv), "--deadline", "5", "--timeout", "10"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--timeout 10s" in err and "--deadline 5s" in err


def test_report_has_a_header_and_runs_host_shows_that_hosts_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_HOME", str(tmp_path / "home"))
    inv = write(tmp_path, INVENTORY)
    assert main(["run", "echo hi", "-g", "local", "-i", str(inv), "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert main(["run", "exit 3", "-g", "local", "-i", str(inv), "--json"]) == 1
    capsys.readouterr()

    assert main(["report", run_id, "-i", str(inv)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run:     {run_id}"
    assert out[1] == "command: echo hi" and out[2] == "pattern: local"
    assert out[3].startswith("state:   finished (1 host)") and out[5].startswith("when:    started")

    assert main(["runs", "--host", "localhost", "--json", "-i", str(inv)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["host_status"] for r in doc] == ["failed", "ok"]  # newest first
    assert main(["runs", "--host", "localhost", "-i", str(inv)]) == 0
    table = capsys.readouterr().out.splitlines()
    column = table[0].index("HOST")
    assert table[1][column:].startswith("failed") and table[2][column:].startswith("ok")
    # --follow on a finished run is its report at once.
    assert main(["report", "--follow", run_id, "-i", str(inv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == run_id


def test_every_option_has_help_text() -> None:
    import argparse

    from fleet.cli import _HANDLERS
    from fleet.cli_parser import build_parser

    parser = build_parser(_HANDLERS)
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = [parser, *subparsers[0].choices.values()]
    missing = [
        f"{p.prog}: {'/'.join(a.option_strings) or a.dest}"
        for p in parsers
        for a in p._actions
        if not a.help and not isinstance(a, argparse._SubParsersAction)
    ]
    assert missing == []


def test_embedded_history_goes_to_the_xdg_data_home(tmp_path: Path) -> None:
    from fleet.settings import Settings

    home = Path.home()
    assert Settings.load(env={}).home == str(home / ".local" / "share" / "fleet")
    assert Settings.load(env={"XDG_DATA_HOME": str(tmp_path)}).home == str(tmp_path / "fleet")
    # The XDG spec: a relative path is invalid and ignored.
    relative = Settings.load(env={"XDG_DATA_HOME": "data"}).home
    assert relative == str(home / ".local" / "share" / "fleet")
    both = {"XDG_DATA_HOME": str(tmp_path), "FLEET_HOME": str(tmp_path / "mine")}
    assert Settings.load(env=both).home == str(tmp_path / "mine")


class _FakeSession:
    def __init__(self, embedded: bool) -> None:
        self.is_embedded = embedded
        self.cancelled: list[str] = []

    def cancel(self, run_id: str) -> None:
        self.cancelled.append(run_id)


def test_ctrl_c_cancels_only_a_run_this_command_runs_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fleet.cli_common import detach

    # `fleet run` in embedded mode: its worker lives in the command.
    own = _FakeSession(embedded=True)
    assert detach(own, "r1") == 130 and own.cancelled == ["r1"]
    assert "Ctrl-C again to quit now" in capsys.readouterr().err
    # `fleet report --follow` of an embedded run another command runs: it goes on.
    follower = _FakeSession(embedded=True)
    assert detach(follower, "r1", runs_here=False) == 130 and follower.cancelled == []
    assert "it goes on" in capsys.readouterr().err
    # A broker's workers run it: it goes on.
    remote = _FakeSession(embedded=False)
    assert detach(remote, "r1") == 130 and remote.cancelled == []
