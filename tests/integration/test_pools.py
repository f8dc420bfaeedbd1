"""Celery the way its users run it: the pool and concurrency asked for are the ones run.

Celery cannot tell an explicit ``-P prefork`` from its default, so a ``worker_pool`` in
the configuration would silently replace it (PITFALLS). fleet's configuration sets no
pool; ``fleet worker`` passes its own default (threads) on the command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses

# The pool's name as Celery's banner shows it: "concurrency: 2 (prefork)".
BANNER_NAME = {"prefork": "prefork", "threads": "thread", "gevent": "gevent"}


def _run_twice_ok(cli: FleetCLI, ledger: Ledger, node: str, names: list[str]) -> None:
    run_ids = []
    for _ in range(2):  # the second run finds the pools of the first (per process)
        rc, doc = cli.run_json(["run", ledger.command("echo pooled"), "-g", "web"], timeout=90)
        assert rc == 0, doc
        assert sorted(statuses(doc)) == names and set(statuses(doc).values()) == {"ok"}
        assert {r["worker"] for r in doc["results"]} == {node}
        run_ids.append(doc["run_id"])
    for name in names:
        assert ledger.lines(name) == run_ids


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_celery_worker_runs_the_pool_it_is_given(
    pool: str,
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    worker = start_worker(name=f"p{pool}", env=env, pool=pool, concurrency=3)
    assert f"concurrency: 3 ({BANNER_NAME[pool]})" in worker.log_text(), worker.log_text()
    cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml"), env)
    _run_twice_ok(cli, ledger, worker.node_name, sorted(h.name for h in ssh_fleet.hosts))
