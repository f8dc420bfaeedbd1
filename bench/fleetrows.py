"""The fleet side of bench/run.py: workers, one timed ``python -m fleet run``, the
figures of a fleet row, and the ``fleet warm sleep 1`` concurrency row.

Every fleet row's CPU is split three ways: the CLI (``RUSAGE_CHILDREN``), the workers
(their /proc stat) and the private redis-server (its /proc stat, all its threads).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.measure import (
    Timing,
    idle_cpu,
    redis_commands,
    redis_reset_stats,
    rss_total_mib,
    sshd_cpu,
    timed_child,
    tree_rss_mib,
)
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import CeleryWorker

REPO = Path(__file__).resolve().parents[1]
FLEET_COLD = "fleet cold"
FLEET_WARM = "fleet warm"
FLEET_API = "fleet warm (API, process up)"  # bench/apirow.py
FLEET_SLEEP = "fleet warm sleep 1"
FLEET_API_SLEEP = "fleet warm sleep 1 (API, process up)"  # bench/apirow.py
SLEEP_COMMAND = "sleep 1"
IDLE_SAMPLE_S = 2.0
#: The performance issue's targets, printed beside the figures (nothing is asserted):
#: CPU of CLI + workers + Redis per host, and `sleep 1` on 200 hosts, warm.
CPU_TARGET_MS = {FLEET_COLD: 12.0, FLEET_WARM: 5.0, FLEET_API: 5.0}
SLEEP_TARGET_HOSTS = 200
SLEEP_TARGET_WALL_S = 1.5
#: The sleep row's threads per worker: its busiest worker's hosts (at least N / W) plus
#: this margin, at most `MAX_THREADS_PER_WORKER`.
SLOT_MARGIN = 8
MAX_THREADS_PER_WORKER = 1100
#: Fresh workers must be registered for host affinity before a run is timed.
REGISTER_TIMEOUT_S = 30.0


class BenchFailure(Exception):
    """A host was not ok, or a tool failed: the figures would be meaningless."""


@dataclass
class Row:
    """One table row: a timing per repeat and the row's other figures per repeat."""

    timings: list[Timing] = field(default_factory=list)
    sshd: list[float] = field(default_factory=list)  # CPU s of the sshd side
    figures: dict[str, list[float]] = field(default_factory=dict)
    redis_top: list[tuple[str, int]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # fixed facts about the row

    def add(self, **figures: float) -> None:
        for name, value in figures.items():
            self.figures.setdefault(name, []).append(value)


def node_name(name: str) -> str:
    return f"{name}@testnode"  # what CeleryWorker names its node


def wait_registered(env: Mapping[str, str], names: Sequence[str]) -> None:
    """Wait until the workers the submitter would route to (`fleet.affinity.routes`)
    are exactly `names`: ours all registered, none of an earlier set left."""
    from fleet import affinity
    from fleet.settings import Settings
    from fleet.store import open_store

    want = {affinity.personal_queue(node_name(n), "fleet") for n in names}
    store = open_store(Settings.load(env))
    try:
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while True:
            live = store.live_workers(["fleet"], affinity.TTL_S - affinity.FRESH_S)
            seen = set(live.get("fleet", ()))
            if seen == want or len(want) < 2:
                return
            if time.monotonic() > deadline:
                raise BenchFailure(
                    f"host affinity: live workers {sorted(seen)}, expected {sorted(want)}"
                )
            time.sleep(0.2)
    finally:
        store.close()


@contextlib.contextmanager
def started_workers(
    env: Mapping[str, str],
    names: Sequence[str],
    concurrency: int,
    log_dir: Path,
    pool: str = "threads",
    app: str = "fleet",
) -> Iterator[list[CeleryWorker]]:
    workers: list[CeleryWorker] = []
    try:
        for name in names:
            workers.append(
                CeleryWorker(
                    env,
                    queues=("fleet",),
                    name=name,
                    concurrency=concurrency,
                    log_dir=log_dir,
                    ready_timeout=60.0,
                    pool=pool,
                    app=app,
                )
            )
        wait_registered(env, names)
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def fleet_run(
    env: Mapping[str, str],
    workers: Sequence[CeleryWorker],
    n: int,
    redis_pid: int | None = None,
    command: str = "uptime",
) -> tuple[Timing, dict[str, Any]]:
    """One ``python -m fleet run COMMAND --group web --json``; raises `BenchFailure`
    unless every host is ok."""
    argv = [sys.executable, "-m", "fleet", "run", command, "--group", "web", "--json"]
    timing, proc = timed_child(argv, env, REPO, [w.pid for w in workers], redis_pid)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BenchFailure(
            f"fleet run {command!r} exit {proc.returncode}, no JSON report:\n{proc.stderr[-3000:]}"
        ) from None
    results = doc.get("results", [])
    bad = [r for r in results if r.get("status") != "ok"]
    if proc.returncode != 0 or bad or len(results) != n:
        lines = [f"fleet run {command!r} exit {proc.returncode}, {len(results)}/{n} results"]
        lines += [f"  {r['host']}: {r['status']}: {r.get('error')}" for r in bad[:50]]
        if len(bad) > 50:
            lines.append(f"  ... and {len(bad) - 50} more not ok")
        if proc.stderr.strip():
            lines.append("stderr: " + proc.stderr.strip()[-2000:])
        raise BenchFailure("\n".join(lines))
    return timing, doc


def span(doc: Mapping[str, Any]) -> float:
    """The run's `started_at` to `finished_at` as stored (no CLI start-up)."""
    start = datetime.fromisoformat(doc["started_at"])
    end = datetime.fromisoformat(doc["finished_at"])
    return (end - start).total_seconds()


def reused(doc: Mapping[str, Any]) -> int:
    return sum(bool(x.get("connection_reused")) for x in doc["results"])


def add_run(
    row: Row, timing: Timing, commands: Mapping[str, int], n: int, pids: Sequence[int]
) -> None:
    """One measured run into `row`: its timing, the workers' memory, the Redis commands
    it caused (`INFO commandstats` since the reset) and the CPU per host with Redis."""
    row.timings.append(timing)
    redis_cpu = timing.detail["redis_cpu"]
    row.add(
        worker_rss_mib=max(tree_rss_mib(p) for p in pids),
        redis_commands_per_host=sum(commands.values()) / n,
        redis_cpu_s=redis_cpu,
        fleet_cpu_ms_per_host=(timing.cpu + redis_cpu) / n * 1000,
    )
    row.redis_top = sorted(commands.items(), key=lambda kv: -kv[1])[:8]


def timed_row(
    row: Row,
    env: Mapping[str, str],
    workers: Sequence[CeleryWorker],
    n: int,
    redis: RedisServer,
    fleet: SSHFleet,
    command: str = "uptime",
) -> dict[str, Any]:
    """One timed fleet run into `row`: timing, sshd CPU, CPU with Redis, run span,
    connections reused, Redis commands, worker memory. Returns the run's report."""
    redis_reset_stats(redis.port)
    s0 = sshd_cpu(fleet)
    timing, doc = fleet_run(env, workers, n, redis.pid, command)
    row.sshd.append(sshd_cpu(fleet) - s0)
    pids = [w.pid for w in workers]
    add_run(row, timing, redis_commands(redis.port), n, pids)
    row.add(
        worker_rss_total_mib=rss_total_mib(pids),
        connections_reused=reused(doc),
        run_span_s=span(doc),
    )
    return doc


def cold_warm_pair(
    rows: Mapping[str, Row],
    env: Mapping[str, str],
    names: Sequence[str],
    concurrency: int,
    n: int,
    redis: RedisServer,
    fleet: SSHFleet,
    log_dir: Path,
    pool: str = "threads",
    then: Callable[[Sequence[CeleryWorker]], None] | None = None,
) -> None:
    """Fresh workers, then `fleet cold` and `fleet warm` at once, then `then(workers)`
    while they are still up. Memory per pooled connection: the workers' RSS after the
    run minus right after start, over the connections they hold (each run opens N minus
    the reused ones; none is closed)."""
    with started_workers(env, names, concurrency, log_dir, pool) as workers:
        pids = [w.pid for w in workers]
        rss_start = rss_total_mib(pids)
        held = 0
        for label in (FLEET_COLD, FLEET_WARM):
            row = rows[label]
            doc = timed_row(row, env, workers, n, redis, fleet)
            held += n - reused(doc)
            rss = row.figures["worker_rss_total_mib"][-1]
            row.add(
                worker_rss_start_mib=rss_start,
                connections_held=held,
                worker_kib_per_connection=(rss - rss_start) * 1024 / held,
                worker_idle_cpu_s_per_s=idle_cpu(pids, IDLE_SAMPLE_S),
            )
        if then is not None:
            then(workers)


def sleep_threads(hosts: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
    """Threads per worker so that every host has a slot at once: the busiest worker's
    share of the hosts under host affinity (rendezvous hashing over these workers, as
    the submitter will route them; one worker takes all) plus `SLOT_MARGIN`, capped."""
    from fleet import affinity

    n, w = len(hosts), len(names)
    if w >= 2:
        queues = [affinity.personal_queue(node_name(x), "fleet") for x in names]
        busiest = max(Counter(affinity.choose(h, queues) for h in hosts).values())
    else:
        busiest = n
    wanted = max(math.ceil(n / w), busiest) + SLOT_MARGIN
    threads = min(wanted, MAX_THREADS_PER_WORKER)
    return {
        "threads_per_worker": threads,
        "threads_wanted": wanted,
        "threads_capped": wanted > threads,
        "busiest_worker_hosts": busiest,
    }


def sleep_row(
    row: Row,
    env: Mapping[str, str],
    workers_count: int,
    repeat: int,
    n: int,
    redis: RedisServer,
    fleet: SSHFleet,
    log_dir: Path,
    pool: str = "threads",
    then: Callable[[Sequence[CeleryWorker]], None] | None = None,
) -> None:
    """`fleet warm sleep 1`: W new workers with a thread per host, one untimed
    `uptime` run to fill their pools, then `sleep 1` timed `repeat` times, then
    `then(workers)` while they are still up."""
    names = [f"benchsw{k + 1}" for k in range(workers_count)]
    row.info.update(sleep_threads([h.name for h in fleet.hosts], names))
    row.info["workers"] = workers_count
    threads = row.info["threads_per_worker"]
    with started_workers(env, names, threads, log_dir, pool) as workers:
        pids = [w.pid for w in workers]
        rss_start = rss_total_mib(pids)
        _, fill = fleet_run(env, workers, n, redis.pid)
        rss_filled = rss_total_mib(pids)
        row.info.update(
            fill_rss_start_mib=rss_start,
            fill_rss_mib=rss_filled,
            fill_connections_reused=reused(fill),
            # A connection and (on a fresh pool) the thread that opened it, per host.
            kib_per_host_with_thread=(rss_filled - rss_start) * 1024 / n,
        )
        for _ in range(repeat):
            timed_row(row, env, workers, n, redis, fleet, SLEEP_COMMAND)
        if then is not None:
            then(workers)
