"""`python -m fleet worker`: a real worker started the way the README says."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import procs
from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.integration.fleetcli import REPO, FleetCLI, statuses


@pytest.mark.parametrize(
    ("pool_args", "banner_pool", "events"),
    [((), "thread", "OFF"), (("-P", "prefork", "-E"), "prefork", "ON")],
)
def test_fleet_worker_runs_tasks_under_its_node_name(
    pool_args: tuple[str, ...],
    banner_pool: str,
    events: str,
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    """`fleet worker` is `celery -A fleet worker` with fleet's default pool (threads) or
    the one given with -P; -c is the concurrency of either."""
    env = {
        "FLEET_BROKER_URL": fresh_redis.url,
        "FLEET_RESULT_BACKEND": fresh_redis.url,
        "FLEET_KNOWN_HOSTS": str(ssh_fleet.known_hosts),
        "FLEET_CONNECT_TIMEOUT": "1",
        "FLEET_AUTH_TIMEOUT": "2",
        "FLEET_HOME": str(tmp_path / "home"),
    }
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "cliw.log"
    proc = procs.spawn(
        [
            sys.executable,
            "-m",
            "fleet",
            "worker",
            "-Q",
            "fleet",
            "-c",
            "4",
            "-n",
            "cliw@%h",
            *pool_args,
        ],
        log,
        env=full_env,
        cwd=REPO,
    )
    node = f"cliw@{socket.gethostname()}"
    try:
        deadline = time.monotonic() + 30
        while f"{node} ready." not in log.read_text(errors="replace"):
            assert proc.poll() is None, procs.log_tail(log, 40)
            assert time.monotonic() < deadline, procs.log_tail(log, 40)
            time.sleep(0.05)
        banner = log.read_text(errors="replace")
        assert f"concurrency: 4 ({banner_pool})" in banner, banner
        # Task events (Flower, `celery events`) only with -E; the task registered by name.
        assert f"task events: {events}" in banner, banner
        assert "fleet.run_on_host" in banner and "fleet.aggregate" in banner

        cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml"), env)
        rc, doc = cli.run_json(["run", ledger.command("uptime"), "-g", "web"], timeout=60)
        assert rc == 0, doc
        assert sorted(statuses(doc)) == sorted(h.name for h in ssh_fleet.hosts)
        assert set(statuses(doc).values()) == {"ok"}
        assert {r["worker"] for r in doc["results"]} == {node}
        ledger.assert_at_most_once()

        celery = [sys.executable, "-m", "celery", "-A", "fleet", "inspect"]
        inspect = subprocess.run(
            [*celery, "registered", "-d", node, "--timeout", "5"],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=REPO,
            timeout=60,
        )
        assert inspect.returncode == 0, inspect.stdout + inspect.stderr
        assert "fleet.run_on_host" in inspect.stdout, inspect.stdout
        conf = subprocess.run(
            [*celery, "stats", "-d", node, "--timeout", "5", "--json"],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=REPO,
            timeout=60,
        )
        assert conf.returncode == 0, conf.stderr
        assert '"max-concurrency": 4' in conf.stdout, conf.stdout
    finally:
        procs.stop(proc)


def test_celery_worker_without_a_broker_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_BROKER")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "fleet", "worker", "-l", "WARNING"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "FLEET_BROKER_URL" in proc.stderr
