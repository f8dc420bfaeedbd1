"""The ``(API, process up)`` rows: fleet's Python API from a submitter that is already up
(bench/api_submitter.py), on the workers and warm pools of the row before it (``fleet
warm``: ``uptime``; ``fleet warm sleep 1``: ``sleep 1``). The same run without the
CLI's interpreter start-up and imports: what a web app or a script calling fleet pays.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.children import Child, ask, stop
from bench.fleetrows import FLEET_API, BenchFailure, Row
from bench.measure import (
    Timing,
    box_ticks,
    busy_share,
    redis_commands,
    redis_reset_stats,
    sshd_cpu,
    tree_cpu,
    tree_rss_mib,
)
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import CeleryWorker

HERE = Path(__file__).resolve().parent


def api_row(
    row: Row,
    env: Mapping[str, str],
    workers: Sequence[CeleryWorker],
    n: int,
    redis: RedisServer,
    fleet: SSHFleet,
    command: str = "uptime",
    label: str = FLEET_API,
) -> None:
    """One untimed call (the submitter's first run loads what it loads lazily), then one
    timed call into `row`, both running `command`. Raises `BenchFailure` unless every
    host is ok."""
    argv = [sys.executable, str(HERE / "api_submitter.py"), "web", command]
    submitter = Child(argv, env)
    try:
        (warmup,) = ask([submitter], "go")
        if warmup["ok"] != n:
            raise BenchFailure(
                f"{FLEET_API}: {warmup['ok']}/{n} ok: " + "; ".join(warmup["not_ok"])
            )
        pids = [w.pid for w in workers]
        redis_reset_stats(redis.port)
        before = sum(tree_cpu(p) for p in pids)
        redis0, s0, box0 = tree_cpu(redis.pid), sshd_cpu(fleet), box_ticks()
        (answer,) = ask([submitter], "go")
        busy = busy_share(box0, box_ticks())
        worker_cpu = sum(tree_cpu(p) for p in pids) - before
        redis_cpu = tree_cpu(redis.pid) - redis0
        row.sshd.append(sshd_cpu(fleet) - s0)
        commands = redis_commands(redis.port)
    finally:
        stop([submitter])
    if answer["ok"] != n:
        raise BenchFailure(f"{label}: {answer['ok']}/{n} ok: " + "; ".join(answer["not_ok"]))
    submit_cpu = answer["cpu_s"]
    detail = {
        "cli_cpu": submit_cpu,
        "worker_cpu": worker_cpu,
        "redis_cpu": redis_cpu,
        "box_busy": busy,
    }
    row.timings.append(Timing(answer["wall_s"], submit_cpu + worker_cpu, detail))
    row.add(
        worker_rss_mib=max(tree_rss_mib(p) for p in pids),
        connections_reused=answer["reused"],
        redis_commands_per_host=sum(commands.values()) / n,
        redis_cpu_s=redis_cpu,
        fleet_cpu_ms_per_host=(submit_cpu + worker_cpu + redis_cpu) / n * 1000,
    )
    row.redis_top = sorted(commands.items(), key=lambda kv: -kv[1])[:8]
