"""Edges of a run's life: a cancel racing a running host, a store wiped mid-run,
a queue no worker consumes. Real redis-server, sshd hosts and celery workers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.integration.fleetcli import FleetCLI, statuses, wait_until
from tests.integration.test_runs import cli, cluster_env  # noqa: F401  (fixtures)


def test_cancel_and_a_replayed_message_never_relabel_a_host_that_ran(
    cli: FleetCLI,  # noqa: F811
    ssh_fleet: SSHFleet,
    start_worker: Any,
    ledger: Ledger,
    fresh_redis: RedisServer,
) -> None:
    start_worker(concurrency=8, env=cli.env)
    proc = cli.popen(["run", ledger.command("sleep 3; echo done"), "--group", "web", "--json"])
    wait_until(lambda: len(ledger.hosts()) == len(ssh_fleet.hosts), timeout=30)
    run_id = cli.run_json(["runs", "--limit", "1"])[1][0]["run_id"]
    assert cli.run(["cancel", run_id]).returncode == 0
    # A second delivery of a running host's message arrives after the cancel.
    from fleet.canvas import task_host
    from fleet.settings import Settings
    from fleet.store import open_store

    settings = Settings.load(broker_url=fresh_redis.url)
    store = open_store(settings)
    record = store.get_run(run_id)
    host = store.run_hosts(run_id)[0]
    from fleet.celery import app_for

    app_for(settings).send_task(
        "fleet.run_on_host",
        args=[run_id, task_host(host), record.command, dict(record.options)],
        queue="fleet",
    )
    out, _err = proc.communicate(timeout=60)
    doc = json.loads(out)
    assert doc["state"] == "cancelled"
    assert set(statuses(doc).values()) == {"ok"}, statuses(doc)
    assert all(r["stdout"] == "done\n" for r in doc["results"])
    time.sleep(1)
    for h in ssh_fleet.hosts:
        assert ledger.lines(h.name) == [run_id]


def test_store_wiped_mid_run_is_an_infrastructure_error(
    cli: FleetCLI,  # noqa: F811
    start_worker: Any,
    ledger: Ledger,
    fresh_redis: RedisServer,
) -> None:
    start_worker(concurrency=8, env=cli.env)
    proc = cli.popen(["run", ledger.command("sleep 4"), "--group", "web"])
    wait_until(lambda: len(ledger.hosts()) >= 1, timeout=30)
    redis.Redis.from_url(fresh_redis.url).flushall()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "vanished" in err and "Traceback" not in err
    # The workers' late results do not recreate keys for the vanished run.
    time.sleep(5)
    client = redis.Redis.from_url(fresh_redis.url)
    leftovers = [k for k in client.scan_iter("fleet:*") if b":results" in k or b":events" in k]
    assert leftovers == []


def test_a_queue_no_worker_consumes_is_named_and_ends_lost(
    cli: FleetCLI,  # noqa: F811
    ssh_fleet: SSHFleet,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    start_worker(queues=("fleet",), concurrency=4, env=cli.env)
    cli.inventory = ssh_fleet.write_inventory(
        tmp_path / "inv.yaml", ssh_fleet.hosts[:2], extra_vars={"queue": "nowhere"}
    )
    started = time.monotonic()
    proc = cli.run(["run", "true", "--group", "web", "--timeout", "5", "--deadline", "14"])
    assert 13 <= time.monotonic() - started < 40
    assert proc.returncode == 1
    assert "no host has started" in proc.stderr and "nowhere" in proc.stderr
    _, doc = cli.run_json(["report", _last_run(cli)])
    assert set(statuses(doc).values()) == {"lost"}
    assert all("queue 'nowhere'" in r["error"] for r in doc["results"])


def _last_run(fleet_cli: FleetCLI) -> str:
    return str(fleet_cli.run_json(["runs", "--limit", "1"])[1][0]["run_id"])


def test_watchdog_finishes_an_unfollowed_run_at_its_deadline(
    cli: FleetCLI,  # noqa: F811
    ssh_fleet: SSHFleet,
    start_worker: Any,
    ledger: Ledger,
    fresh_redis: RedisServer,
) -> None:
    import signal

    env = {**cli.env, "FLEET_WATCHDOG_INTERVAL": "1"}
    doomed = start_worker(name="doomed", concurrency=8, env=env)
    start_worker(name="bystander", queues=("elsewhere",), concurrency=1, env=env)
    victim = ssh_fleet.hosts[0].name
    command = ledger.command(f'if [ "$FLEET_HOST" = {victim} ]; then sleep 60; fi; echo ok')
    proc = cli.popen(["run", command, "--group", "web", "--deadline", "10", "--timeout", "6"])
    wait_until(lambda: len(ledger.hosts()) == len(ssh_fleet.hosts), timeout=30)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    run_id = err.split("fleet report --follow ")[1].split()[0]
    doomed.kill(signal.SIGKILL)

    from fleet.store.redis_store import RedisRunStore

    store = RedisRunStore.from_url(fresh_redis.url)
    # Nobody follows or reads the run: only the bystander's watchdog can finish it.
    wait_until(lambda: store.get_run(run_id).state == "finished", timeout=40, interval=0.5)
    results = store.results(run_id)
    assert results[victim].status.value == "lost"
    assert {results[h.name].status.value for h in ssh_fleet.hosts[1:]} == {"ok"}
    assert ledger.lines(victim) == [run_id]


def test_report_renders_a_run_still_in_progress(
    cli: FleetCLI,  # noqa: F811
    ssh_fleet: SSHFleet,
    start_worker: Any,
    ledger: Ledger,
) -> None:
    slow = ssh_fleet.hosts[0].name
    start_worker(concurrency=8, env=cli.env)
    command = ledger.command(f'if [ "$FLEET_HOST" = {slow} ]; then sleep 6; fi; echo hi')
    proc = cli.popen(["run", command, "--group", "web", "--json"])
    wait_until(lambda: len(ledger.hosts()) == len(ssh_fleet.hosts), timeout=30)
    run_id = _last_run(cli)
    wait_until(lambda: len(cli.run_json(["report", run_id])[1]["results"]) >= 1, timeout=20)
    rc, doc = cli.run_json(["report", run_id])
    assert doc["state"] == "running" and rc == 1  # not finished: not "all ok" yet
    assert slow not in statuses(doc) and doc["hosts_total"] == len(ssh_fleet.hosts)
    text = cli.run(["report", run_id])
    assert "Traceback" not in text.stderr and "hi" in text.stdout
    out, _err = proc.communicate(timeout=60)
    final = json.loads(out)
    assert final["state"] == "finished" and set(statuses(final).values()) == {"ok"}
