"""RabbitMQ as the broker (results and the run store stay in Redis).

The harness starts a private rabbitmq-server (`rabbitmq_server`); each test gets a vhost
of its own (`rabbit_vhost`, an AMQP URL). In CI it runs: a missing server fails the run.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, statuses


def test_run_with_rabbitmq_broker_and_redis_results(
    rabbit_vhost: str,
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = {
        "FLEET_BROKER_URL": rabbit_vhost,
        "FLEET_RESULT_BACKEND": fresh_redis.url,
        "FLEET_KNOWN_HOSTS": str(ssh_fleet.known_hosts),
        "FLEET_CONNECT_TIMEOUT": "1",
        "FLEET_AUTH_TIMEOUT": "2",
        "FLEET_HOME": str(tmp_path / "home"),
    }
    worker = start_worker(name="rabbit", concurrency=8, env=env)
    vhost = rabbit_vhost.rsplit("/", 1)[1]
    assert f"/{vhost}" in worker.log_text()  # connected to the private vhost
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
