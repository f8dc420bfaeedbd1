"""Faults in a distributed run (TESTING.md rows 2, 10, 12): real Redis, sshd, workers, CLI.

Every test also checks the run contract: the JSON parses, each selected host has
exactly one status, no traceback on stderr, no ledger with more than one line.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.stubs import HungListener
from tests.harness.workers import StartWorker
from tests.integration.conftest import require_binary
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses, wait_until


def cluster_env(url: str, fleet: SSHFleet, tmp_path: Path) -> dict[str, str]:
    return fleet_env(url, fleet.known_hosts, tmp_path / "home")


def finish(proc: subprocess.Popen[str], hosts: set[str], timeout: float = 90) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    doc: dict[str, Any] = json.loads(out)
    assert sorted(r["host"] for r in doc["results"]) == sorted(hosts), doc
    return doc


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_binary("redis-server", "redis-server")
    server = RedisServer(tmp_path / "redis", persistent=True)
    try:
        yield server
    finally:
        server.stop()


def test_redis_restarted_mid_run(
    persistent_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = cluster_env(persistent_redis.url, ssh_fleet, tmp_path)
    cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml"), env)
    names = {h.name for h in ssh_fleet.hosts}
    start_worker(name="survivor", concurrency=8, env=env)
    command = ledger.command("sleep 3; echo done")
    proc = cli.popen(["run", command, "-g", "web", "--deadline", "30", "--timeout", "20", "--json"])
    wait_until(lambda: set(ledger.hosts()) == names, timeout=30)
    # Every command is running now: take Redis away under the workers and the CLI, for
    # longer than the store client's own reconnect retries (about 2.5 s), so the CLI's
    # follower and the workers' result writes each see the outage and must ride it out.
    persistent_redis.restart(down_for=4.0)
    assert proc.poll() is None, "the following CLI died with the outage"
    doc = finish(proc, names)
    got = statuses(doc)
    # A result written after the restart is `ok`; one that could not be is `lost`.
    assert set(got.values()) <= {"ok", "lost"}, got
    assert proc.returncode in (0, 1)
    for name in names:
        assert ledger.lines(name) == [doc["run_id"]]
    # The workers consume again: a second run right after goes through.
    rc, again = cli.run_json(["run", ledger.command("echo again"), "-g", "web"], timeout=60)
    assert rc == 0, again
    assert set(statuses(again).values()) == {"ok"}
    ledger.assert_at_most_once()


def test_a_dying_worker_holds_no_unstarted_task(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    """Fault matrix #10. Worker A (concurrency 1) runs one host; with prefetch disabled
    (fleet.celery_config) it holds no other host's message while busy, so the other two
    stay in the queue. SIGKILL A, start B: only the host A was running ends `lost` (at
    the deadline); the other two run on B. Nothing runs twice.
    """
    env = cluster_env(fresh_redis.url, ssh_fleet, tmp_path)
    hosts = ssh_fleet.hosts[:3]
    names = {h.name for h in hosts}
    cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml", hosts=hosts), env)
    broker = redis.Redis.from_url(fresh_redis.url)
    worker_a = start_worker(name="a", concurrency=1, env=env)
    proc = cli.popen(
        ["run", ledger.command("sleep 4"), "-g", "web", "--deadline", "12", "--timeout", "6",
         "--json"]
    )  # fmt: skip
    wait_until(lambda: len(ledger.hosts()) == 1, timeout=30)
    # One message running on A; A reserved nothing else: two still in the queue.
    wait_until(lambda: broker.llen("fleet") == 2, timeout=10)
    time.sleep(0.5)
    assert broker.llen("fleet") == 2
    running = ledger.hosts()[0]
    worker_a.kill()
    start_worker(name="b", concurrency=1, env=env)
    doc = finish(proc, names)
    got = statuses(doc)
    by_host = {r["host"]: r for r in doc["results"]}
    assert got[running] == "lost"
    others = names - {running}
    assert {got[n] for n in others} == {"ok"}, got
    assert {by_host[n]["worker"] for n in others} == {"b@testnode"}
    assert proc.returncode == 1
    for name in names:
        assert ledger.lines(name) == [doc["run_id"]]
    broker.close()


def test_hung_host_costs_its_connect_timeout_and_frees_the_slot(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    hung_listener: HungListener,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = cluster_env(fresh_redis.url, ssh_fleet, tmp_path)
    good = ssh_fleet.hosts[:2]
    entries = {
        h.name: {
            "address": h.address,
            "port": h.port,
            "user": ssh_fleet.user,
            "identity_file": str(ssh_fleet.client_key),
        }
        for h in good
    }
    entries["hung"] = {"address": hung_listener.address, "port": hung_listener.port}
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"groups": {"web": {"hosts": entries}}}))
    cli = FleetCLI(inventory, env)
    start_worker(name="single", concurrency=1, env=env)
    started = time.monotonic()
    rc, doc = cli.run_json(["run", ledger.command("echo fine"), "-g", "web", "--timeout", "20"])
    elapsed = time.monotonic() - started
    got = statuses(doc)
    assert sorted(got) == sorted(entries)
    assert got["hung"] in {"unreachable", "timeout"}, doc
    assert {got[h.name] for h in good} == {"ok"}
    assert rc == 1
    hung = next(r for r in doc["results"] if r["host"] == "hung")
    # About the 1 s connect timeout, nowhere near the 20 s command timeout.
    assert hung["duration_s"] is not None and hung["duration_s"] < 5, hung
    assert hung_listener.accepted >= 1
    assert elapsed < 15
    # The only slot is free again: the next run on this worker is quick.
    started = time.monotonic()
    rc, doc = cli.run_json(["run", ledger.command("echo again"), "-g", "web:!hung"])
    assert rc == 0 and set(statuses(doc).values()) == {"ok"}
    assert time.monotonic() - started < 10
    assert ledger.hosts() == sorted(h.name for h in good)
    ledger.assert_at_most_once()
