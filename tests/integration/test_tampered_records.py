"""Fault matrix #21: a corrupt or tampered record in the store is skipped with a warning
naming it; `fleet runs` lists the others (exit 0) and every worker's watchdog still
finishes overdue runs afterwards (issue 10, point 5, in part)."""

from __future__ import annotations

import json
from pathlib import Path

import redis

import fleet
from fleet.settings import Settings
from fleet.store.redis_store import RedisRunStore
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, wait_until


def test_a_tampered_record_is_skipped_and_the_watchdog_goes_on(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    start_worker(name="wd", env={**env, "FLEET_WATCHDOG_INTERVAL": "0.5"})
    inventory = ssh_fleet.write_inventory(tmp_path / "inventory.yaml")
    cli = FleetCLI(inventory, env)
    ids = []
    for _ in range(2):
        rc, doc = cli.run_json(["run", "true", "-g", "web"])
        assert rc == 0
        ids.append(doc["run_id"])
    client = redis.Redis.from_url(fresh_redis.url)
    client.hset(f"fleet:run:{ids[0]}", "record", '{"run_id": 5, "hosts": "\x1b[2J"')
    done = cli.run(["runs", "--json"])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert [r["run_id"] for r in json.loads(done.stdout)] == [ids[1]]
    assert ids[0] in done.stderr and "unreadable" in done.stderr
    assert "\x1b" not in done.stderr

    # A run on a queue nobody consumes, not followed: the watchdog ends it at its deadline.
    lonely = ssh_fleet.write_inventory(tmp_path / "lonely.yaml", extra_vars={"queue": "nobody"})
    settings = Settings.load(
        env={**env, "FLEET_INVENTORY": str(lonely)},
        command_timeout=1, connect_timeout=1, auth_timeout=1, deadline=4,
    )  # fmt: skip
    with fleet.run("true", "web", settings=settings) as handle:
        store = RedisRunStore.from_url(fresh_redis.url, retention=600)
        try:
            wait_until(lambda: store.get_run(handle.run_id).state == "finished", timeout=20)
        finally:
            store.close()
    client.close()
