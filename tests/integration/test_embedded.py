"""Embedded mode end to end: no broker, no Redis, an in-process worker, SQLite history.

Everything runs `python -m fleet` (or a small script using the API) in a subprocess
with no FLEET_BROKER_URL: the test process never imports `fleet.celery`, whose app
is configured once per process from the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.ledger import Ledger
from tests.integration.fleetcli import REPO, FleetCLI, statuses


def local_inventory(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump({"groups": {"local": {"hosts": {"localhost": {"connection": "local"}}}}})
    )
    return path


@pytest.fixture
def cli(tmp_path: Path) -> FleetCLI:
    assert "FLEET_BROKER_URL" not in os.environ
    return FleetCLI(local_inventory(tmp_path / "inventory.yaml"), {})


def check_json(proc: subprocess.CompletedProcess[str], hosts: set[str]) -> dict[str, Any]:
    """The contract of every run: JSON parses, one status per host, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert [r["host"] for r in doc["results"]] == sorted(hosts) or {
        r["host"] for r in doc["results"]
    } == hosts
    assert len(doc["results"]) == len(hosts)
    return doc


def test_run_with_no_broker_keeps_history_in_sqlite(cli: FleetCLI, ledger: Ledger) -> None:
    home = Path(os.environ["FLEET_HOME"])
    proc = cli.run(["run", ledger.command("uptime"), "--group", "local", "--json"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = check_json(proc, {"localhost"})
    assert statuses(doc) == {"localhost": "ok"}
    assert "load average" in doc["results"][0]["stdout"]
    assert doc["results"][0]["worker"].startswith("embedded@")
    assert (home / "history.sqlite3").is_file()
    assert ledger.lines("localhost") == [doc["run_id"]]

    listing = cli.run(["runs", "--json"])
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
    assert [r["run_id"] for r in json.loads(listing.stdout)] == [doc["run_id"]]
    text = cli.run(["runs"])
    assert doc["run_id"] in text.stdout

    report = cli.run(["report", doc["run_id"], "--json"])
    assert report.returncode == 0
    again = check_json(report, {"localhost"})
    assert again["run_id"] == doc["run_id"] and statuses(again) == {"localhost": "ok"}
    assert again["results"][0]["stdout"] == doc["results"][0]["stdout"]


def test_readme_quick_start_in_the_repo_root() -> None:
    """`python -m fleet run "uptime" --group local` as the README says, in the repo root,
    with the repo's own inventory.yaml (the `pip install -e .` half is the test command's)."""
    env = {k: v for k, v in os.environ.items() if k != "FLEET_INVENTORY"}
    proc = subprocess.run(
        [sys.executable, "-m", "fleet", "run", "uptime", "--group", "local"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "load average" in proc.stdout
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("1 host: 1 ok in "), summary


def test_failing_command_exits_1(cli: FleetCLI, ledger: Ledger) -> None:
    proc = cli.run(["run", ledger.command("echo no >&2; exit 4"), "-g", "local", "--json"])
    assert proc.returncode == 1
    doc = check_json(proc, {"localhost"})
    result = doc["results"][0]
    assert (result["status"], result["exit_code"], result["stderr"]) == ("failed", 4, "no\n")
    ledger.assert_at_most_once()


def test_timeout_ends_the_command_in_about_a_second(cli: FleetCLI, ledger: Ledger) -> None:
    started = time.monotonic()
    proc = cli.run(
        ["run", ledger.command("echo before; sleep 30"), "-g", "local", "--timeout", "1", "--json"]
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    result = check_json(proc, {"localhost"})["results"][0]
    assert result["status"] == "timeout"
    assert result["stdout"] == "before\n"  # output so far is kept
    # 1 s of command plus the SIGTERM/SIGKILL grace of the local runner (a hang guard,
    # not a benchmark): far below the 30 s the command asked for.
    assert 1.0 <= result["duration_s"] < 5.0, result
    assert elapsed < 15
    assert len(ledger.lines("localhost")) == 1


def test_html_report_is_self_contained(cli: FleetCLI, tmp_path: Path) -> None:
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    proc = cli.run(["run", "echo '<b>hi</b>'", "-g", "local", "--html", str(page)])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    html = page.read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "localhost" in html
    assert "&lt;b&gt;hi&lt;/b&gt;" in html and "<b>hi</b>" not in html
    # Self-contained: no external scripts, stylesheets or images.
    for needle in ("<script src", "<link ", 'src="http', 'href="http', "@import"):
        assert needle not in html.lower(), needle


API_SCRIPT = """
import json, sys
import fleet
handle = fleet.run("echo hi", "local", inventory=sys.argv[1])
report = handle.wait(timeout=60)
print(json.dumps({
    "type": type(report).__name__,
    "run_id": handle.run_id,
    "results": [r.to_dict() for r in report.results],
    "ok": len(report.ok),
}))
"""


def test_python_api_in_embedded_mode(cli: FleetCLI) -> None:
    # A script of its own: the API's Celery app is configured once per process.
    proc = subprocess.run(
        [sys.executable, "-c", API_SCRIPT, str(cli.inventory)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["type"] == "RunReport" and doc["ok"] == 1
    assert [(r["host"], r["status"], r["stdout"]) for r in doc["results"]] == [
        ("localhost", "ok", "hi\n")
    ]
    # The API's run is in the same SQLite history as the CLI's.
    listing = json.loads(cli.run(["runs", "--json"]).stdout)
    assert [r["run_id"] for r in listing] == [doc["run_id"]]


def test_ctrl_c_waits_for_running_hosts_and_a_second_one_quits_at_once(
    cli: FleetCLI, tmp_path: Path
) -> None:
    import signal

    started = tmp_path / "started"
    proc = cli.popen(["run", f"touch {started}; sleep 30", "-g", "local"])
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists()
        proc.send_signal(signal.SIGINT)
        time.sleep(1.5)
        assert proc.poll() is None  # waiting for the host still running, as it said
        proc.send_signal(signal.SIGINT)
        began = time.monotonic()
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert time.monotonic() - began < 5  # not the 30 s of the command it left running
    assert "Ctrl-C again to quit now" in err and "Traceback" not in err
