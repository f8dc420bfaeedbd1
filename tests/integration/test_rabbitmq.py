"""RabbitMQ as the broker (results and the run store stay in Redis).

Needs a RabbitMQ answering on 127.0.0.1:5672 with the guest account and `rabbitmqctl`
to manage it; each test gets a private vhost, deleted afterwards, so nothing of an
existing broker's queues is touched. Skipped with the reason when RabbitMQ is absent.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, statuses

AMQP_ROOT = "amqp://guest:guest@127.0.0.1:5672//"


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    ctl = _which("rabbitmqctl")
    assert ctl is not None
    return subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def rabbit_vhost() -> Iterator[str]:
    if _which("rabbitmq-server") is None or _which("rabbitmqctl") is None:
        pytest.skip("RabbitMQ not installed (rabbitmq-server / rabbitmqctl not found)")
    try:
        with Connection(AMQP_ROOT, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
    except Exception as exc:
        pytest.skip(f"RabbitMQ not answering at {AMQP_ROOT}: {exc}")
    vhost = f"fleet-test-{secrets.token_hex(4)}"
    added = _ctl("add_vhost", vhost)
    if added.returncode != 0:
        pytest.skip(f"rabbitmqctl add_vhost failed: {added.stderr.strip()[:200]}")
    try:
        perms = _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        assert perms.returncode == 0, perms.stderr
        yield vhost
    finally:
        _ctl("delete_vhost", vhost)


def test_run_with_rabbitmq_broker_and_redis_results(
    rabbit_vhost: str,
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = {
        "FLEET_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{rabbit_vhost}",
        "FLEET_RESULT_BACKEND": fresh_redis.url,
        "FLEET_KNOWN_HOSTS": str(ssh_fleet.known_hosts),
        "FLEET_CONNECT_TIMEOUT": "1",
        "FLEET_AUTH_TIMEOUT": "2",
        "FLEET_HOME": str(tmp_path / "home"),
    }
    worker = start_worker(name="rabbit", concurrency=8, env=env)
    assert f"/{rabbit_vhost}" in worker.log_text()  # connected to the private vhost
    cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml"), env)
    rc, doc = cli.run_json(["run", ledger.command("echo via rabbit"), "-g", "web"], timeout=90)
    assert rc == 0, doc
    names = sorted(h.name for h in ssh_fleet.hosts)
    assert sorted(statuses(doc)) == names
    assert set(statuses(doc).values()) == {"ok"}
    assert {r["worker"] for r in doc["results"]} == {"rabbit@testnode"}
    assert {r["stdout"] for r in doc["results"]} == {"via rabbit\n"}
    for name in names:
        assert ledger.lines(name) == [doc["run_id"]]
    # The run's history is in the Redis store: `fleet runs` lists it.
    rc, listing = cli.run_json(["runs"])
    assert rc == 0 and [r["run_id"] for r in listing] == [doc["run_id"]]
