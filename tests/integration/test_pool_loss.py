"""A prefork worker's pool process dies while it runs a host (the OOM killer, a crash):
the worker's main process records the host `lost` at once, naming the worker and why
(`fleet.pool_loss`), and the run ends, or a rolling run goes on, seconds later, not at
its deadline. Real Redis (and RabbitMQ), sshd, a `-P prefork` worker whose one pool
process gets SIGKILL, the CLI.

The deadline is 120 s away, so a run that ends within `ENDS_WITHIN_S` of the kill was
ended by fleet's handling of the lost process; nothing runs twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import CeleryWorker, StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses, wait_until

ENDS_WITHIN_S = 30.0
SLOW = 60


@dataclass
class Killed:
    """A run whose first host's pool process was killed: the CLI following it (or
    detached), the worker, the host names, when the kill was."""

    cli: FleetCLI
    proc: subprocess.Popen[str]
    worker: CeleryWorker
    names: list[str]
    killed_at: float

    def report(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=ENDS_WITHIN_S + 30)
        took = time.monotonic() - self.killed_at
        assert "Traceback" not in err, err
        assert took < ENDS_WITHIN_S, f"the run ended {took:.1f} s after the kill"
        doc: dict[str, Any] = json.loads(out)
        return doc


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


@pytest.fixture
def kill_run(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> Callable[..., Killed]:
    """`kill_run(count, *cli_args, broker=None, detach=False)`: `count` hosts, the
    first one's command sleeps `SLOW` s (the later ones return at once), a prefork
    worker with one pool process; SIGKILL that process once the first host runs.
    `broker`: a RabbitMQ URL (results and the run store stay in Redis); `detach`:
    Ctrl-C the CLI before the kill, so nobody follows the run; `time_limit`: the
    worker's ``--time-limit`` (seconds), which kills the process instead."""
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    env["FLEET_WATCHDOG_INTERVAL"] = "0.5"

    def kill(
        count: int,
        *extra: str,
        broker: str | None = None,
        detach: bool = False,
        time_limit: int | None = None,
    ) -> Killed:
        if broker is not None:
            env["FLEET_BROKER_URL"] = broker
        hosts = ssh_fleet.hosts[:count]
        cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inv.yaml", hosts=hosts), env)
        limit = ["--time-limit", str(time_limit)] if time_limit else []
        worker = start_worker(name="p", concurrency=1, env=env, pool="prefork", extra_args=limit)
        (child,) = _children(worker.pid)
        marker = tmp_path / "first-started"
        command = ledger.command(f"if mkdir {marker} 2>/dev/null; then sleep {SLOW}; fi; echo ok")
        argv = ["run", command, "-g", "web", "--deadline", "120", "--timeout", "100", "--json"]
        proc = cli.popen([*argv, *extra])
        wait_until(lambda: len(ledger.hosts()) == 1, timeout=30)
        if detach:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
        if not time_limit:  # else Celery's hard time limit kills it
            os.kill(child, signal.SIGKILL)
        return Killed(cli, proc, worker, [h.name for h in hosts], time.monotonic())

    return kill


def test_a_host_whose_pool_process_died_ends_lost_in_seconds(
    kill_run: Callable[..., Killed], ledger: Ledger
) -> None:
    killed = kill_run(1)
    doc = killed.report()
    (result,) = doc["results"]
    assert result["status"] == "lost", result
    assert result["worker"] == "p@testnode"
    assert "its worker p@testnode lost the pool process running it" in result["error"]
    assert "SIGKILL" in result["error"], result
    assert killed.proc.returncode == 1
    assert ledger.lines(killed.names[0]) == [doc["run_id"]]
    assert "recorded lost: the pool process that had taken it died" in killed.worker.log_text()


def test_a_rolling_run_goes_on_after_a_pool_process_died(
    kill_run: Callable[..., Killed], ledger: Ledger
) -> None:
    """`--batch 1` on three hosts: the first batch's pool process dies; the failed chord
    member keeps Celery from calling the batch's callback, so the worker's watchdog
    continues the run: the next batches run on the worker's new pool process."""
    killed = kill_run(3, "--batch", "1")
    doc = killed.report()
    first, second, third = killed.names
    assert statuses(doc) == {first: "lost", second: "ok", third: "ok"}, doc
    for name in killed.names:
        assert ledger.lines(name) == [doc["run_id"]]


def test_its_fanout_slot_is_given_back(kill_run: Callable[..., Killed], ledger: Ledger) -> None:
    """`--fanout 1`: the dead process cannot give its host's slot back; unless the loss
    does, the next host waits for the slot's own expiry (the host's timeouts, minutes)."""
    killed = kill_run(2, "--fanout", "1")
    doc = killed.report()
    first, second = killed.names
    assert statuses(doc) == {first: "lost", second: "ok"}, doc
    for name in killed.names:
        assert ledger.lines(name) == [doc["run_id"]]


def test_a_hard_time_limit_is_a_loss_too(kill_run: Callable[..., Killed], ledger: Ledger) -> None:
    """A worker started with Celery's ``--time-limit``: the pool process running the host
    past it is killed by the worker itself, and the host is recorded the same way."""
    killed = kill_run(2, "--batch", "1", time_limit=3)
    doc = killed.report()
    first, second = killed.names
    assert statuses(doc) == {first: "lost", second: "ok"}, doc
    (lost,) = [r for r in doc["results"] if r["host"] == first]
    assert "hard time limit of 3" in lost["error"], lost
    for name in killed.names:
        assert ledger.lines(name) == [doc["run_id"]]


def test_on_rabbitmq_too(
    kill_run: Callable[..., Killed], ledger: Ledger, rabbit_vhost: str
) -> None:
    """RabbitMQ (late ack): Celery acknowledges the lost task's message (no redelivery:
    `task_reject_on_worker_lost` is off), and the rolling run goes on the same way."""
    killed = kill_run(2, "--batch", "1", broker=rabbit_vhost)
    doc = killed.report()
    first, second = killed.names
    assert statuses(doc) == {first: "lost", second: "ok"}, doc
    for name in killed.names:
        assert ledger.lines(name) == [doc["run_id"]]


def test_a_run_nobody_follows_is_finished_by_the_watchdog(
    kill_run: Callable[..., Killed], ledger: Ledger, fresh_redis: RedisServer
) -> None:
    """The CLI detached (Ctrl-C), so no follower finishes the run once its counts are
    in, and the failed chord member keeps Celery from calling the callback: the
    worker's watchdog finishes the run."""
    killed = kill_run(1, detach=True)
    (name,) = killed.names
    (run_id,) = ledger.lines(name)
    # Read straight from Redis: `fleet runs` and `fleet report` would finish the run
    # themselves once every host has a result.
    raw = redis.Redis.from_url(fresh_redis.url)
    try:
        wait_until(
            lambda: raw.hget(f"fleet:run:{run_id}", "state") == b"finished",
            timeout=ENDS_WITHIN_S,
        )
    finally:
        raw.close()
    rc, doc = killed.cli.run_json(["report", run_id])
    assert statuses(doc) == {name: "lost"}, doc
    assert rc == 1
    assert ledger.lines(name) == [run_id]
