"""Bad input of the kinds a fresh reader found: one line naming what is wrong, exit 2,
nothing recorded (no run, no audit entry, no staged value) and never exit 70."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from fleet.cli import main

INVENTORY = "groups:\n  local:\n    hosts:\n      h1: {connection: local}\n"


@pytest.fixture
def inv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLEET_HOME", str(tmp_path / "home"))
    for name in list(os.environ):
        if name.startswith("FLEET_") and name != "FLEET_HOME":
            monkeypatch.delenv(name)
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    return path


def nothing_recorded(tmp_path: Path) -> bool:
    history = tmp_path / "home" / "history.sqlite3"
    if not history.exists():
        return True
    db = sqlite3.connect(history)
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return all(
        db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,)
        for table in ("runs", "audit", "run_env")
        if table in tables
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--timeout", "nan"], "--timeout: expected a positive number, got 'nan'"),
        (["--timeout", "inf"], "--timeout: expected a positive number, got 'inf'"),
        (["--connect-timeout", "nan"], "--connect-timeout"),
        (["--deadline", "-inf"], "--deadline"),
        (["--batch", "\u00b2"], "--batch"),  # a superscript two: isdigit() says yes
        (["--batch", "\uff11"], "--batch"),  # a full-width one
        (["--sudo-user", "nobody"], "--sudo-user nobody: needs --sudo"),
        (["--batch-order", "random"], "--batch-order random needs --batch"),
        (["--env", "FLEET_HOST=x"], "--env FLEET_HOST: fleet sets FLEET_HOST"),
        (["--env", "BIG=" + "x" * 60_000], "environment values too large"),
        (["--env", "A=x", "--env-from", "A=HOME"], "A is also given with --env"),
    ],
)
def test_bad_run_options_are_one_line_and_exit_2(
    inv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    assert main(["run", "true", "-g", "local", "-i", str(inv), *args]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err
    assert nothing_recorded(tmp_path)


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("FLEET_COMMAND_TIMEOUT", "nan", "FLEET_COMMAND_TIMEOUT: expected a number above 0"),
        ("FLEET_RETENTION", "0", "FLEET_RETENTION: expected a whole number above 0"),
        ("FLEET_TRANSFER_LIMIT", "-1", "FLEET_TRANSFER_LIMIT"),
        ("FLEET_OUTPUT_CAP", "-5", "FLEET_OUTPUT_CAP"),
        ("FLEET_HANDSHAKES_PER_TARGET", "-1", "expected a whole number 0 or more"),
    ],
)
def test_bad_settings_name_the_variable(
    inv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    said: str,
) -> None:
    monkeypatch.setenv(name, value)
    assert main(["run", "true", "-g", "local", "-i", str(inv)]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err
    assert nothing_recorded(tmp_path)


def test_zero_means_no_limit_where_documented(
    inv: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_HANDSHAKES_PER_TARGET", "0")
    monkeypatch.setenv("FLEET_INVENTORY_MAX_BYTES", "0")
    assert main(["run", "true", "-g", "local", "-i", str(inv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["ok"] == 1


@pytest.mark.parametrize("kind", ["a file", "under a file", "in /proc"])
def test_an_unusable_fleet_home_is_a_one_line_error(
    inv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    home = {"a file": afile, "under a file": afile / "sub", "in /proc": Path("/proc/nope")}[kind]
    monkeypatch.setenv("FLEET_HOME", str(home))
    assert main(["runs", "-i", str(inv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fleet: FLEET_HOME {home}: ") and err.count("\n") == 1, err


def test_a_home_fleet_did_not_create_keeps_its_mode(
    inv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    monkeypatch.setenv("FLEET_HOME", str(shared))
    assert main(["runs", "-i", str(inv)]) == 0
    assert shared.stat().st_mode & 0o777 == 0o755  # FLEET_HOME=~ must not lock others out
    assert (shared / "history.sqlite3").stat().st_mode & 0o777 == 0o600
    fresh = tmp_path / "fresh" / "home"
    monkeypatch.setenv("FLEET_HOME", str(fresh))
    assert main(["runs", "-i", str(inv)]) == 0
    assert fresh.stat().st_mode & 0o777 == 0o700


def test_a_schedule_batch_with_a_non_ascii_digit_names_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_HOME", str(tmp_path / "home"))
    path = tmp_path / "inventory.yaml"
    path.write_text(
        INVENTORY + 'schedules:\n  s: {command: x, group: local, every: 1m, batch: "\u00b2"}\n'
    )
    assert main(["schedules", "-i", str(path)]) == 2
    assert "schedules.s.batch" in capsys.readouterr().err


@pytest.mark.parametrize("deadline", ["8"])
def test_a_deadline_alone_ends_a_slow_host_as_timeout_not_lost(
    inv: Path, capsys: pytest.CaptureFixture[str], deadline: str
) -> None:
    argv = ["run", "sleep 30", "-g", "local", "-i", str(inv), "--deadline", deadline, "--json"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    [result] = json.loads(captured.out)["results"]
    assert result["status"] == "timeout", result
    assert "not recorded" not in captured.err, captured.err
