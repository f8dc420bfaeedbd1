"""No host byte makes fleet crash, whatever the terminal's encoding (issue 11, point 6);
`fleet --version` and the empty command (issue 11, point 8).

Subprocess runs of ``python -m fleet`` in embedded mode (no broker; the host is
``connection: local``), with stdout/stderr in encodings that cannot show what the host
printed. The text report escapes what the terminal cannot show, ``--json`` is ASCII
and decodes to what the host printed, the exit code comes from the hosts' statuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import fleet

REPO = Path(__file__).resolve().parents[2]
INVENTORY = "groups:\n  local:\n    hosts:\n      localhost: {connection: local}\n"

# stdout/stderr encodings: none of them can encode U+FFFD, most not "é" either.
ENCODINGS: dict[str, dict[str, str]] = {
    "C-locale-no-utf8-mode": {"LC_ALL": "C", "PYTHONUTF8": "0"},
    "C-locale": {"LC_ALL": "C"},
    "ascii": {"PYTHONIOENCODING": "ascii"},
    "latin-1": {"PYTHONIOENCODING": "latin-1"},
    "euc-jp": {"PYTHONIOENCODING": "euc-jp"},
}

# What a host prints (raw bytes), and the status it ends with.
OUTPUTS: dict[str, tuple[bytes, str]] = {
    "latin-1-byte": (b"caf\xe9\n", "failed"),
    "invalid-utf-8": (b"\xff\xfe \x80 ok\n", "ok"),
    "u+fffd": ("\ufffd\n".encode(), "failed"),
    "encoded-surrogate": (b"\xed\xa0\x80 \xed\xbf\xbf\n", "ok"),
    "emoji": ("\U0001f600 \u65e5\u672c\n".encode(), "failed"),
}


def _printf(data: bytes) -> str:
    """A shell command printing exactly `data` (every byte as an octal escape)."""
    return "printf '" + "".join(f"\\{b:03o}" for b in data) + "'"


def _command(data: bytes, status: str) -> str:
    return f"{_printf(data)}; {_printf(data)} >&2; exit {0 if status == 'ok' else 1}"


def _decoded(data: bytes) -> str:
    """What the JSON contract says a host's bytes become (replacement-decoded UTF-8)."""
    return data.decode("utf-8", "replace")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    return tmp_path


def fleet_cli(
    home: Path,
    *args: str | bytes,
    encoding: str = "ascii",
    inventory: str = "inventory.yaml",
) -> subprocess.CompletedProcess[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLEET_", "PYTHONIOENCODING", "PYTHONUTF8", "LC_"))
    }
    env |= {"PYTHONPATH": str(REPO), "FLEET_HOME": str(home / "home"), "NO_COLOR": "1"}
    env |= ENCODINGS[encoding]
    proc = subprocess.run(
        [sys.executable, "-m", "fleet", *args, "-i", str(home / inventory)],
        capture_output=True,
        cwd=home,
        env=env,
        timeout=120,
    )
    assert b"Traceback" not in proc.stderr, proc.stderr
    assert b"internal error" not in proc.stderr, proc.stderr
    assert proc.returncode != 70
    return proc


def strict_json(data: bytes) -> Any:
    """Parse as a strict decoder would: ASCII only, no NaN, no lone surrogate escape."""
    assert data.isascii(), data

    def refuse(token: str) -> Any:
        raise AssertionError(f"not JSON: {token}")

    doc = json.loads(data.decode("ascii"), parse_constant=refuse)
    text = json.dumps(doc, ensure_ascii=False)
    text.encode("utf-8")  # raises on a lone surrogate
    return doc


# --- fleet run: text report and --json --------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("output", OUTPUTS)
def test_text_report_survives_any_host_byte(home: Path, output: str, encoding: str) -> None:
    data, status = OUTPUTS[output]
    proc = fleet_cli(home, "run", _command(data, status), "-g", "local", "-v", encoding=encoding)
    assert proc.returncode == (0 if status == "ok" else 1), proc.stderr
    out = proc.stdout.decode("latin-1")  # any bytes: whatever the terminal got
    assert "localhost" in out
    assert f"1 {status}" in out


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_json_report_is_ascii_and_decodes_to_the_host_output(home: Path, encoding: str) -> None:
    data = b"".join(d for d, _ in OUTPUTS.values())
    status = "ok" if encoding in ("ascii", "euc-jp") else "failed"
    proc = fleet_cli(
        home, "run", _command(data, status), "-g", "local", "--json", encoding=encoding
    )
    assert proc.returncode == (0 if status == "ok" else 1), proc.stderr
    doc = strict_json(proc.stdout)
    (row,) = doc["results"]
    assert row["status"] == status
    assert row["stdout"] == _decoded(data)
    assert row["stderr"] == _decoded(data)
    assert row["stdout_bytes"] == len(data)


def test_non_utf8_bytes_in_the_command_itself(home: Path) -> None:
    """argv bytes that are not UTF-8 (a Latin-1 shell) reach the host as given and are
    shown by `fleet run`, `fleet runs` and `fleet report`, text and JSON."""
    command = b"printf 'caf\\351\\n'; : \xe9\xff"
    enc = "C-locale-no-utf8-mode"
    proc = fleet_cli(home, "run", command, "-g", "local", "--json", encoding=enc)
    assert proc.returncode == 0, proc.stderr
    doc = strict_json(proc.stdout)
    assert doc["command"] == "printf 'caf\\351\\n'; : \ufffd\ufffd"
    assert doc["results"][0]["stdout"] == "caf\ufffd\n"
    run_id = doc["run_id"]

    runs = fleet_cli(home, "runs", encoding=enc)
    assert runs.returncode == 0 and run_id.encode() in runs.stdout
    (listed,) = strict_json(fleet_cli(home, "runs", "--json", encoding=enc).stdout)
    assert listed["command"] == doc["command"]
    report = fleet_cli(home, "report", run_id, "-v", encoding="latin-1")
    assert report.returncode == 0 and b"localhost" in report.stdout
    again = fleet_cli(home, "report", run_id, "--json", encoding="euc-jp")
    assert strict_json(again.stdout) == doc


def test_html_report_path_with_non_ascii_name(home: Path) -> None:
    page = home / "rapport-\u00e9t\u00e9.html"
    proc = fleet_cli(
        home, "run", _printf(b"caf\xe9\n"), "-g", "local", "--html", str(page), encoding="ascii"
    )
    assert proc.returncode == 0, proc.stderr
    assert b"HTML report written to" in proc.stderr
    assert "caf\ufffd" in page.read_text(encoding="utf-8")


# --- host names and inventory text ---------------------------------------------------

NON_ASCII_HOST = (
    "groups:\n  local:\n    hosts:\n"
    '      "caf\u00e9-\u2603":\n        connection: local\n'
    '        motto: "\U0001f600"\n        ratio: .nan\n'
)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_hosts_with_a_non_ascii_name(home: Path, encoding: str) -> None:
    (home / "odd.yaml").write_text(NON_ASCII_HOST, encoding="utf-8")
    text = fleet_cli(home, "hosts", "local", encoding=encoding, inventory="odd.yaml")
    assert text.returncode == 0, text.stderr
    assert b"caf" in text.stdout and b"local" in text.stdout
    as_json = fleet_cli(home, "hosts", "local", "--json", encoding=encoding, inventory="odd.yaml")
    (host,) = strict_json(as_json.stdout)
    assert host["name"] == "caf\u00e9-\u2603"
    assert host["vars"] == {"motto": "\U0001f600", "ratio": None}


def test_run_on_a_host_with_a_non_ascii_name(home: Path) -> None:
    (home / "odd.yaml").write_text(NON_ASCII_HOST, encoding="utf-8")
    proc = fleet_cli(home, "run", "exit 1", "-g", "local", encoding="ascii", inventory="odd.yaml")
    assert proc.returncode == 1, proc.stderr
    assert b"caf" in proc.stdout


@pytest.mark.parametrize("encoding", ["C-locale-no-utf8-mode", "ascii", "euc-jp"])
def test_inventory_error_quoting_a_non_ascii_key(home: Path, encoding: str) -> None:
    (home / "bad.yaml").write_text(
        "groups:\n  local:\n    h\u00f6sts:\n      localhost: {connection: local}\n",
        encoding="utf-8",
    )
    proc = fleet_cli(home, "hosts", "local", encoding=encoding, inventory="bad.yaml")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith(b"fleet: ") for line in lines), proc.stderr
    assert b"unknown key" in proc.stderr


def test_schedules_json_with_non_ascii_text(home: Path) -> None:
    (home / "sched.yaml").write_text(
        INVENTORY + "schedules:\n  caf\u00e9:\n    command: echo \u2603\n"
        "    group: local\n    every: 1h\n",
        encoding="utf-8",
    )
    proc = fleet_cli(home, "schedules", "--json", encoding="ascii", inventory="sched.yaml")
    assert proc.returncode == 0, proc.stderr
    (row,) = strict_json(proc.stdout)
    assert row["name"] == "caf\u00e9" and row["command"] == "echo \u2603"
    text = fleet_cli(home, "schedules", encoding="latin-1", inventory="sched.yaml")
    assert text.returncode == 0 and "caf\u00e9".encode("latin-1") in text.stdout


# --- --version, the empty command ------------------------------------------------------


def test_version(home: Path) -> None:
    proc = fleet_cli(home, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"fleet {fleet.__version__}\n"


def test_version_does_not_import_celery() -> None:
    code = (
        "import sys; from fleet.cli import main; rc = main(['--version']);"
        "bad = [m for m in ('celery', 'kombu', 'paramiko', 'redis') if m in sys.modules];"
        "assert not bad, bad; raise SystemExit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fleet {fleet.__version__}"


@pytest.mark.parametrize("command", ["", "   ", " \n\t "])
def test_empty_command_is_refused_before_anything_runs(home: Path, command: str) -> None:
    proc = fleet_cli(home, "run", command, "-g", "local")
    assert proc.returncode == 2
    assert proc.stdout == b""
    (line,) = proc.stderr.decode().splitlines()
    assert line.startswith("fleet: empty command")
    assert strict_json(fleet_cli(home, "runs", "--json").stdout) == []
