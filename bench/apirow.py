"""The ``(API, process up)`` rows: fleet's Python API from a submitter that is already up
(bench/api_submitter.py), on the workers and warm pools of the row before it (``fleet
warm``: ``uptime``; ``fleet warm sleep 1``: ``sleep 1``). The same run without the
CLI's interpreter start-up and imports: what a web app or a script calling fleet pays.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.children import Child, ask, ask_measured, stop
from bench.fleetrows import FLEET_API, BenchFailure, Row, add_run
from bench.measure import sshd_cpu
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
    pids = [w.pid for w in workers]
    try:
        (warmup,) = ask([submitter], "go")
        if warmup["ok"] != n:
            raise BenchFailure(f"{label}: {warmup['ok']}/{n} ok: " + "; ".join(warmup["not_ok"]))
        s0 = sshd_cpu(fleet)
        answer, timing, commands = ask_measured(submitter, pids, redis)
        row.sshd.append(sshd_cpu(fleet) - s0)
    finally:
        stop([submitter])
    if answer["ok"] != n:
        raise BenchFailure(f"{label}: {answer['ok']}/{n} ok: " + "; ".join(answer["not_ok"]))
    add_run(row, timing, commands, n, pids)
    row.add(connections_reused=answer["reused"])
