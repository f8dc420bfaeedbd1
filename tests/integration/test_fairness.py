"""No host waits behind a busy slot while a worker is idle; a run ends where it is served.

Fault matrix #19. With early ack the prefetch window reopens as soon as a task starts,
so a worker busy with a slow host reserved the next host's message and held it while
another worker sat idle (celery #6500); that host ended `lost` at the deadline and its
command still ran after the run had ended. fleet acks late with one message per slot
(fleet.celery_config), on Redis and on RabbitMQ alike.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

import fleet
from fleet.settings import Settings
from fleet.store.redis_store import RedisRunStore
from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_no_host_waits_behind_a_busy_slot(
    broker: str,
    request: pytest.FixtureRequest,
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    env["FLEET_AUTH_TIMEOUT"] = "1"
    if broker == "rabbitmq":
        env["FLEET_BROKER_URL"] = request.getfixturevalue("rabbit_vhost")
    start_worker(name="one", concurrency=1, env=env)
    start_worker(name="two", concurrency=1, env=env)
    hosts = ssh_fleet.hosts[:6]
    slow = hosts[0].name
    cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml", hosts=hosts), env)
    command = ledger.command(f'case "$FLEET_HOST" in {slow}) sleep 60;; *) sleep 4;; esac')
    rc, doc = cli.run_json(
        ["run", command, "--group", "all", "--timeout", "20", "--connect-timeout", "1",
         "--deadline", "23"],
        timeout=90,
    )  # fmt: skip
    got = statuses(doc)
    assert got[slow] == "timeout", doc
    assert {got[h.name] for h in hosts[1:]} == {"ok"}, got
    assert rc == 1
    assert doc["state"] == "finished"
    # Nothing ran after the run ended, and nothing ran twice.
    time.sleep(2)
    for host in hosts:
        assert ledger.lines(host.name) == [doc["run_id"]], host.name


def test_a_run_finishes_on_time_when_no_worker_consumes_the_default_queue(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    """Every host on queue dc-x, the only worker on dc-x: the chord callback goes there
    too, so a run nobody follows reaches `finished` with its true duration."""
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    start_worker(name="dcx", queues=("dc-x",), env=env)
    hosts = ssh_fleet.hosts[:3]
    inventory = ssh_fleet.write_inventory(
        tmp_path / "inventory.yaml", hosts=hosts, extra_vars={"queue": "dc-x"}
    )
    settings = Settings.load(
        env={**env, "FLEET_INVENTORY": str(inventory)}, command_timeout=10, deadline=120
    )
    handle = fleet.run(ledger.command("true"), "web", settings=settings)
    # Nobody follows the run (no wait(), no `fleet report`): only the callback can end it.
    store = RedisRunStore.from_url(fresh_redis.url, prefix=settings.prefix, retention=600)
    try:
        give_up = time.monotonic() + 30
        run = store.get_run(handle.run_id)
        while run.state != "finished" and time.monotonic() < give_up:
            time.sleep(0.1)
            run = store.get_run(handle.run_id)
        assert run.state == "finished", run
        assert run.finished_at is not None
        took = (
            datetime.fromisoformat(run.finished_at) - datetime.fromisoformat(run.created_at)
        ).total_seconds()
        assert took < 30, took  # its true duration, far from the 120 s deadline
        assert {r.status.value for r in store.results(handle.run_id).values()} == {"ok"}
    finally:
        store.close()
        handle._session.close()
