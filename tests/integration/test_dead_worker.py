"""A worker that dies while it runs a host (fault matrix row 10, the run's side): the
host ends `lost` once the worker's liveness lapses (`fleet.orphans`), seconds after the
death, not at the run's deadline; a rolling run goes on with its next batch, or stops
at its --max-fail. Real Redis, sshd, workers (SIGKILL: a machine dying) and CLI.

Every test keeps the deadline far away (120 s), so a run that ends within the bounds
below was ended by the liveness sweep, and checks that nothing ran twice.
"""

from __future__ import annotations

import json
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

#: FLEET_WORKER_DEAD_AFTER here: a worker silent 3 s counts as dead.
DEAD_AFTER_S = 3.0
#: After the kill, the run must end within this (the deadline is 120 s away): the dead
#: worker's lapse, the judge's own wait after its start, the sweeps, the next batches.
ENDS_WITHIN_S = 30.0
SLOW = 12


def _first_sleeps(ledger: Ledger, tmp_path: Path) -> str:
    """The command: the first host to start it sleeps `SLOW` seconds, every later one
    returns at once (the simulated hosts share this machine's file system)."""
    marker = tmp_path / "first-started"
    return ledger.command(f"if mkdir {marker} 2>/dev/null; then sleep {SLOW}; fi; echo done")


@dataclass
class Cluster:
    """A run of `_first_sleeps` on the first `count` hosts, started on worker a alone
    (concurrency 1), with the CLI following it."""

    cli: FleetCLI
    names: list[str]
    proc: subprocess.Popen[str]
    worker_a: CeleryWorker
    env: dict[str, str]


@pytest.fixture
def start_run(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> Callable[..., Cluster]:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    env.update(FLEET_WORKER_DEAD_AFTER=str(DEAD_AFTER_S), FLEET_WATCHDOG_INTERVAL="0.5")

    def start(count: int, *extra: str, broker: str | None = None) -> Cluster:
        if broker is not None:  # RabbitMQ: results and the run store stay in Redis
            env["FLEET_BROKER_URL"] = broker
        hosts = ssh_fleet.hosts[:count]
        cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inv.yaml", hosts=hosts), env)
        worker_a = start_worker(name="a", concurrency=1, env=env)
        argv = ["run", _first_sleeps(ledger, tmp_path), "-g", "web", "--deadline", "120"]
        proc = cli.popen([*argv, "--timeout", "100", "--json", *extra])
        wait_until(lambda: len(ledger.hosts()) == 1, timeout=30)
        return Cluster(cli, [h.name for h in hosts], proc, worker_a, env)

    return start


def _finish(cluster: Cluster, killed_at: float) -> dict[str, Any]:
    out, err = cluster.proc.communicate(timeout=ENDS_WITHIN_S + 30)
    took = time.monotonic() - killed_at
    assert "Traceback" not in err, err
    assert took < ENDS_WITHIN_S, f"the run ended {took:.1f} s after the kill"
    doc: dict[str, Any] = json.loads(out)
    return doc


def _kill_a_with_b_started(cluster: Cluster, start_worker: StartWorker) -> float:
    start_worker(name="b", concurrency=2, env=cluster.env)
    cluster.worker_a.kill()
    return time.monotonic()


def test_a_killed_workers_host_ends_lost_in_seconds(
    start_run: Any, start_worker: StartWorker, ledger: Ledger
) -> None:
    """Worker a runs the one host; b starts meanwhile; SIGKILL a: the host ends `lost`,
    naming a and why, and the run ends, seconds after, not at its deadline."""
    cluster = start_run(1)
    doc = _finish(cluster, _kill_a_with_b_started(cluster, start_worker))
    (result,) = doc["results"]
    assert result["status"] == "lost", result
    assert result["worker"] == "a@testnode"
    assert "its worker a@testnode stopped" in result["error"], result
    assert cluster.proc.returncode == 1
    assert ledger.lines(result["host"]) == [doc["run_id"]]


def test_a_worker_restarted_under_its_name_does_not_hide_its_hosts(
    start_run: Any, start_worker: StartWorker, ledger: Ledger
) -> None:
    """The dead worker comes back at once under the same node name (a service manager's
    restart): its name beats again, but the process that held the host is gone."""
    cluster = start_run(1)
    cluster.worker_a.kill()
    killed_at = time.monotonic()
    start_worker(name="a", concurrency=1, env=cluster.env)
    doc = _finish(cluster, killed_at)
    assert statuses(doc) == {cluster.names[0]: "lost"}
    assert ledger.lines(cluster.names[0]) == [doc["run_id"]]


def test_a_rolling_run_goes_on_after_its_worker_died(
    start_run: Any, start_worker: StartWorker, ledger: Ledger
) -> None:
    """`--batch 1` on three hosts: the first batch's worker dies; its host ends `lost`
    and the next two batches run on the surviving worker (no --max-fail: a failure
    stops nothing)."""
    cluster = start_run(3, "--batch", "1")
    doc = _finish(cluster, _kill_a_with_b_started(cluster, start_worker))
    first, second, third = cluster.names
    assert statuses(doc) == {first: "lost", second: "ok", third: "ok"}, doc
    for name in cluster.names:
        assert ledger.lines(name) == [doc["run_id"]]


def test_a_rolling_run_stops_at_its_max_fail_after_its_worker_died(
    start_run: Any, start_worker: StartWorker, ledger: Ledger
) -> None:
    """The same with `--max-fail 1`: the lost host counts as a failure, so the later
    batches are skipped, and the run ends at once."""
    cluster = start_run(3, "--batch", "1", "--max-fail", "1")
    doc = _finish(cluster, _kill_a_with_b_started(cluster, start_worker))
    first, second, third = cluster.names
    assert statuses(doc) == {first: "lost", second: "skipped", third: "skipped"}
    assert ledger.hosts() == [first]


def test_a_frozen_worker_that_comes_back_changes_nothing(
    start_run: Any, start_worker: StartWorker, ledger: Ledger
) -> None:
    """SIGSTOP instead of SIGKILL (a VM paused, a process stopped): the host ends `lost`
    as for a dead worker. SIGCONT: the worker finishes the command and its result is
    refused (first write wins) and logged; the run's record does not change, and
    nothing ran twice."""
    cluster = start_run(1)
    start_worker(name="b", concurrency=2, env=cluster.env)
    cluster.worker_a.kill(signal.SIGSTOP)
    doc = _finish(cluster, time.monotonic())
    assert statuses(doc) == {cluster.names[0]: "lost"}
    cluster.worker_a.kill(signal.SIGCONT)
    wait_until(lambda: "not recorded" in cluster.worker_a.log_text(), timeout=SLOW + 30)
    assert "was taken for dead" in cluster.worker_a.log_text()
    rc, again = cluster.cli.run_json(["report", doc["run_id"]])
    assert statuses(again) == {cluster.names[0]: "lost"} and rc == 1
    assert ledger.lines(cluster.names[0]) == [doc["run_id"]]


def test_on_rabbitmq_the_redelivered_message_is_ignored_and_the_run_goes_on(
    start_run: Any, start_worker: StartWorker, ledger: Ledger, rabbit_vhost: str
) -> None:
    """RabbitMQ (late ack) gives the dead worker's message back at once, to b: b finds
    the host claimed and ignores the copy (it must not run it again, nor count it in
    the chord); the host ends `lost` as above and the rolling run goes on."""
    cluster = start_run(3, "--batch", "1", broker=rabbit_vhost)
    killed_at = _kill_a_with_b_started(cluster, start_worker)
    doc = _finish(cluster, killed_at)
    first, second, third = cluster.names
    assert statuses(doc) == {first: "lost", second: "ok", third: "ok"}, doc
    for name in cluster.names:
        assert ledger.lines(name) == [doc["run_id"]]


def test_a_worker_stopped_with_sigterm_finishes_its_host_and_leaves_not_dead(
    start_run: Any, fresh_redis: RedisServer
) -> None:
    """A warm shutdown: the worker finishes the host it runs, records it, and drops its
    liveness (it holds nothing): no other worker will find it dead."""
    cluster = start_run(1)
    raw = redis.Redis.from_url(fresh_redis.url)
    try:
        assert [m.split(b"\x1f")[0] for m in raw.zrange("fleet:alive", 0, -1)] == [b"a@testnode"]
        cluster.worker_a.stop(timeout=SLOW + 20)
        doc = _finish(cluster, time.monotonic())
        assert statuses(doc) == {cluster.names[0]: "ok"}
        assert raw.zrange("fleet:alive", 0, -1) == []
    finally:
        raw.close()


def test_a_cold_shutdown_still_records_its_host(
    start_run: Any, start_worker: StartWorker, ledger: Ledger
) -> None:
    """SIGQUIT, Celery's cold shutdown: the threads pool cannot cancel a running task
    (Celery logs that its pool "does not implement kill_job"), so the command ends and
    its result is recorded before the worker exits; the run ends then, not at its
    deadline. (With the prefork pool the task is cancelled and the host is found lost
    like a killed worker's: the worker keeps its liveness entry at a cold shutdown, see
    tests/unit/test_orphans.py.)"""
    cluster = start_run(1)
    start_worker(name="b", concurrency=2, env=cluster.env)
    cluster.worker_a.kill(signal.SIGQUIT)
    doc = _finish(cluster, time.monotonic())
    assert statuses(doc) == {cluster.names[0]: "ok"}
    assert ledger.lines(cluster.names[0]) == [doc["run_id"]]


def test_a_redis_restart_longer_than_the_ttl_makes_no_worker_dead(
    ssh_fleet: SSHFleet, start_worker: StartWorker, ledger: Ledger, tmp_path: Path
) -> None:
    """Redis (AOF on) down for longer than FLEET_WORKER_DEAD_AFTER while two workers run
    their hosts: when it is back, every worker's time alive looks spent, yet no judge
    takes a live worker for dead (its own beats had a gap; its own entry is checked on
    Redis's clock; a death must be seen twice), not even one that comes back a second
    late: every host ends `ok`."""
    server = RedisServer(tmp_path / "redis", persistent=True)
    try:
        env = fleet_env(server.url, ssh_fleet.known_hosts, tmp_path / "home")
        env.update(FLEET_WORKER_DEAD_AFTER=str(DEAD_AFTER_S), FLEET_WATCHDOG_INTERVAL="0.5")
        hosts = ssh_fleet.hosts[:4]
        cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inv.yaml", hosts=hosts), env)
        workers = [start_worker(name=name, concurrency=2, env=env) for name in ("a", "b")]
        time.sleep(DEAD_AFTER_S + 1)  # both judging by now
        argv = ["run", ledger.command("sleep 9"), "-g", "web", "--deadline", "120"]
        proc = cli.popen([*argv, "--timeout", "100", "--json"])
        wait_until(lambda: len(ledger.hosts()) == len(hosts), timeout=30)
        # b is also slow to come back (stopped through the outage and 1 s after it):
        # only the judge's own wait after the outage lets it beat before a verdict.
        workers[1].kill(signal.SIGSTOP)
        server.restart(down_for=DEAD_AFTER_S + 2)
        time.sleep(1.0)
        workers[1].kill(signal.SIGCONT)
        out, err = proc.communicate(timeout=90)
        assert "Traceback" not in err, err
        doc = json.loads(out)
        assert statuses(doc) == {h.name: "ok" for h in hosts}, doc
        for host in hosts:
            assert ledger.lines(host.name) == [doc["run_id"]]
    finally:
        server.stop()
