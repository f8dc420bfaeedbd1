"""Distributed runs end to end: real redis-server, sshd hosts, celery workers, the CLI."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses, wait_until

JSON_RESULT_KEYS = {
    "host", "address", "status", "exit_code", "stdout", "stderr", "stdout_truncated",
    "stderr_truncated", "duration_s", "error", "worker",
}  # fmt: skip


def host_entry(fleet: SSHFleet, host: Any) -> dict[str, Any]:
    return {
        "address": host.address,
        "port": host.port,
        "user": fleet.user,
        "identity_file": str(fleet.client_key),
    }


def write_inventory(path: Path, groups: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@pytest.fixture
def cluster_env(fresh_redis: RedisServer, ssh_fleet: SSHFleet, tmp_path: Path) -> dict[str, str]:
    return fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")


@pytest.fixture
def cli(cluster_env: dict[str, str], ssh_fleet: SSHFleet, tmp_path: Path) -> FleetCLI:
    inventory = ssh_fleet.write_inventory(tmp_path / "inventory.yaml")
    return FleetCLI(inventory, dict(cluster_env))


def test_run_over_22_hosts_all_ok_with_json_contract(
    make_ssh_fleet: Callable[..., SSHFleet],
    cluster_env: dict[str, str],
    start_worker: Any,
    tmp_path: Path,
) -> None:
    fleet = make_ssh_fleet(22)
    inventory = fleet.write_inventory(tmp_path / "inventory.yaml")
    env = {**cluster_env, "FLEET_KNOWN_HOSTS": str(fleet.known_hosts)}
    start_worker(name="a", concurrency=8, env=env)
    start_worker(name="b", concurrency=8, env=env)
    cli = FleetCLI(inventory, env)
    rc, doc = cli.run_json(["run", "echo hello from $FLEET_HOST; uptime", "--group", "web"])
    assert rc == 0, doc
    assert len(doc["results"]) == 22
    assert set(statuses(doc).values()) == {"ok"}
    assert {k: v for k, v in doc["counts"].items() if v} == {"ok": 22}
    for key in ("run_id", "command", "pattern", "started_at", "finished_at", "counts"):
        assert key in doc
    assert doc["pattern"] == "web"
    for result in doc["results"]:
        assert set(result) >= JSON_RESULT_KEYS
        assert result["stdout"].startswith(f"hello from {result['host']}\n")
        assert result["exit_code"] == 0 and result["worker"] in {"a@testnode", "b@testnode"}
    # Plain text when not on a terminal: no colour codes, gathered output, a summary.
    proc = cli.run(["report", doc["run_id"]])
    assert proc.returncode == 0 and "\x1b[" not in proc.stdout
    assert "22 hosts" in proc.stdout


def test_failing_unreachable_and_timing_out_hosts_are_reported(
    cli: FleetCLI,
    ssh_fleet: SSHFleet,
    start_worker: Any,
    refused_port: Any,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    good = ssh_fleet.hosts[:4]
    hosts = {h.name: host_entry(ssh_fleet, h) for h in good}
    hosts["dead"] = {"address": refused_port.address, "port": refused_port.port}
    cli.inventory = write_inventory(tmp_path / "inv.yaml", {"web": {"hosts": hosts}})
    start_worker(concurrency=8, env=cli.env)
    failing, slow = good[1].name, good[2].name
    command = ledger.command(
        f'if [ "$FLEET_HOST" = {failing} ]; then echo broken >&2; exit 3; fi; '
        f'if [ "$FLEET_HOST" = {slow} ]; then sleep 30; fi; echo fine'
    )
    started = time.monotonic()
    rc, doc = cli.run_json(["run", command, "--group", "web", "--timeout", "2"])
    assert time.monotonic() - started < 30
    assert rc == 1
    got = statuses(doc)
    assert got == {
        good[0].name: "ok",
        failing: "failed",
        slow: "timeout",
        good[3].name: "ok",
        "dead": "unreachable",
    }
    by_host = {r["host"]: r for r in doc["results"]}
    assert by_host[failing]["exit_code"] == 3 and "broken" in by_host[failing]["stderr"]
    assert "refused" in by_host["dead"]["error"]
    ledger.assert_at_most_once()


def test_routing_by_queue(
    cli: FleetCLI, ssh_fleet: SSHFleet, start_worker: Any, tmp_path: Path
) -> None:
    eu = ssh_fleet.hosts[:3]
    main = ssh_fleet.hosts[3:6]
    cli.inventory = write_inventory(
        tmp_path / "inv.yaml",
        {
            "eu": {"hosts": {h.name: host_entry(ssh_fleet, h) for h in eu}, "queue": "dc-eu"},
            "main": {"hosts": {h.name: host_entry(ssh_fleet, h) for h in main}},
            "all_hosts": {"children": ["eu", "main"]},
        },
    )
    start_worker(queues=("fleet",), name="central", concurrency=4, env=cli.env)
    start_worker(queues=("dc-eu",), name="eu1", concurrency=4, env=cli.env)
    rc, doc = cli.run_json(["run", "true", "--group", "all_hosts"])
    assert rc == 0, doc
    workers = {r["host"]: r["worker"] for r in doc["results"]}
    assert {workers[h.name] for h in eu} == {"eu1@testnode"}
    assert {workers[h.name] for h in main} == {"central@testnode"}


def test_worker_killed_mid_command_leaves_host_lost_and_run_finishes(
    cli: FleetCLI, ssh_fleet: SSHFleet, start_worker: Any, ledger: Ledger, tmp_path: Path
) -> None:
    hosts = ssh_fleet.hosts[:3]
    cli.inventory = write_inventory(
        tmp_path / "inv.yaml", {"web": {"hosts": {h.name: host_entry(ssh_fleet, h) for h in hosts}}}
    )
    victim = hosts[0].name
    worker = start_worker(name="doomed", concurrency=4, env=cli.env)
    command = ledger.command(f'if [ "$FLEET_HOST" = {victim} ]; then sleep 60; fi; echo done')
    proc = cli.popen(
        ["run", command, "--group", "web", "--deadline", "12", "--timeout", "8", "--json"]
    )
    wait_until(lambda: len(ledger.hosts()) == 3, timeout=30)
    wait_until(lambda: all(ledger.lines(h.name) for h in hosts), timeout=10)
    time.sleep(1.0)  # the quick hosts' results reach the store
    worker.kill(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    doc = json.loads(out)
    assert proc.returncode == 1
    got = statuses(doc)
    assert got[victim] == "lost"
    assert [got[h.name] for h in hosts[1:]] == ["ok", "ok"]
    assert len(ledger.lines(victim)) == 1
    ledger.assert_at_most_once()


def test_redis_down_at_start_exits_3_quickly(cli: FleetCLI, tmp_path: Path) -> None:
    from tests.harness.procs import free_port

    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    started = time.monotonic()
    proc = cli.run(
        ["run", "true", "--group", "web"],
        env={"FLEET_BROKER_URL": url, "FLEET_RESULT_BACKEND": url},
        timeout=60,
    )
    assert time.monotonic() - started < 15
    assert proc.returncode == 3
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_ctrl_c_detaches_and_report_shows_the_whole_run(
    cli: FleetCLI, ssh_fleet: SSHFleet, start_worker: Any, ledger: Ledger
) -> None:
    start_worker(concurrency=8, env=cli.env)
    proc = cli.popen(["run", ledger.command("sleep 3; echo late"), "--group", "web"])
    wait_until(lambda: len(ledger.hosts()) >= 1, timeout=30)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "fleet report --follow " in err  # how to re-attach
    run_id = err.split("fleet report --follow ")[1].split()[0]

    def finished() -> bool:
        _rc, doc = cli.run_json(["report", run_id])
        return len(doc["results"]) == len(ssh_fleet.hosts) and doc["state"] == "finished"

    wait_until(finished, timeout=60, interval=0.5)
    rc, doc = cli.run_json(["report", run_id])
    assert rc == 0 and set(statuses(doc).values()) == {"ok"}
    assert all(r["stdout"] == "late\n" for r in doc["results"])


def test_cancel_leaves_unstarted_hosts_cancelled_and_unrun(
    cli: FleetCLI, ssh_fleet: SSHFleet, start_worker: Any, ledger: Ledger
) -> None:
    worker = start_worker(concurrency=1, env=cli.env)
    proc = cli.popen(["run", ledger.command("sleep 2"), "--group", "web", "--json"])
    wait_until(lambda: len(ledger.hosts()) >= 1, timeout=30)
    run_id = _latest_run_id(cli)
    cancel = cli.run(["cancel", run_id])
    assert cancel.returncode == 0, cancel.stderr
    out, _err = proc.communicate(timeout=60)
    doc = json.loads(out)
    got = statuses(doc)
    ran = set(ledger.hosts())
    assert 1 <= len(ran) <= 2
    assert {got[h] for h in ran} == {"ok"}
    for host in ssh_fleet.hosts:
        if host.name not in ran:
            assert got[host.name] == "cancelled"
    # Messages still queued arrive after the cancel: a fresh worker drains them, nothing runs.
    worker.stop()
    start_worker(concurrency=4, env=cli.env, name="late")
    time.sleep(3)
    assert set(ledger.hosts()) == ran
    assert statuses(cli.run_json(["report", run_id])[1]) == got


def _latest_run_id(cli: FleetCLI) -> str:
    rc, doc = cli.run_json(["runs", "--limit", "1"])
    assert rc == 0
    return str(doc[0]["run_id"])


def test_two_concurrent_runs_keep_separate_results_and_are_listed(
    cli: FleetCLI, ssh_fleet: SSHFleet, start_worker: Any, ledger: Ledger
) -> None:
    start_worker(concurrency=8, env=cli.env)
    names = [h.name for h in ssh_fleet.hosts]
    first = cli.popen(["run", ledger.command("echo one"), "--group", "web", "--json"])
    second = cli.popen(["run", ledger.command("echo two"), "--group", f"web:!{names[0]}", "--json"])
    doc1 = json.loads(first.communicate(timeout=90)[0])
    doc2 = json.loads(second.communicate(timeout=90)[0])
    assert doc1["run_id"] != doc2["run_id"]
    assert {r["stdout"] for r in doc1["results"]} == {"one\n"}
    assert {r["stdout"] for r in doc2["results"]} == {"two\n"}
    assert len(doc2["results"]) == len(names) - 1
    for name in names[1:]:
        assert sorted(ledger.lines(name)) == sorted([doc1["run_id"], doc2["run_id"]])
    assert ledger.lines(names[0]) == [doc1["run_id"]]
    _, listing = cli.run_json(["runs"])
    listed = [r["run_id"] for r in listing]
    assert doc1["run_id"] in listed and doc2["run_id"] in listed
    _rc, only_first = cli.run_json(["runs", "--host", names[0]])
    assert [r["run_id"] for r in only_first] == [doc1["run_id"]]


def test_duplicated_task_message_does_not_run_twice(
    cli: FleetCLI,
    ssh_fleet: SSHFleet,
    start_worker: Any,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start_worker(concurrency=4, env=cli.env)
    for name, value in cli.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FLEET_INVENTORY", str(cli.inventory))
    from fleet.api import run
    from fleet.celery import create_app
    from fleet.settings import Settings

    handle = run(ledger.command("sleep 1"), "web", settings=Settings.load())
    # Replay every message of the run: same task, same arguments, a second delivery.
    from fleet.canvas import task_host
    from fleet.store import open_store

    store = open_store(Settings.load())
    record = store.get_run(handle.run_id)
    app = create_app(Settings.load())
    for host in store.run_hosts(handle.run_id):
        app.send_task(
            "fleet.run_on_host",
            args=[handle.run_id, task_host(host), record.command, dict(record.options)],
            queue="fleet",
        )
    report = handle.wait(timeout=60)
    assert report is not None and all(r.ok for r in report.results)
    time.sleep(2)  # the replayed messages have been consumed by now
    for host in ssh_fleet.hosts:
        assert ledger.lines(host.name) == [handle.run_id]
