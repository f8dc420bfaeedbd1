"""`fleet report --follow RUN_ID` re-attaches to a run still going, as the detach
message promises (issue 11, point 8)."""

from __future__ import annotations

from pathlib import Path

import fleet
from fleet.settings import Settings
from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses


def test_report_follow_waits_for_a_running_run_and_prints_its_final_report(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    start_worker(name="fw", env=env)
    inventory = ssh_fleet.write_inventory(tmp_path / "inventory.yaml")
    settings = Settings.load(env={**env, "FLEET_INVENTORY": str(inventory)}, command_timeout=20)
    with fleet.run(ledger.command("sleep 3; echo late"), "web", settings=settings) as handle:
        cli = FleetCLI(inventory, env)
        rc, running = cli.run_json(["report", handle.run_id])
        assert running["state"] == "running"  # no --follow: the report as it stands
        rc, doc = cli.run_json(["report", "--follow", handle.run_id], timeout=60)
    assert rc == 0 and doc["state"] == "finished", doc
    assert set(statuses(doc).values()) == {"ok"}
    assert {r["stdout"] for r in doc["results"]} == {"late\n"}
    text = cli.run(["report", handle.run_id]).stdout
    assert text.startswith(f"run:     {handle.run_id}\n")
