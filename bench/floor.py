"""The floors of bench/run.py: what this box gives the two parts fleet is made of, each
alone, measured beside fleet in the same invocation.

- ``paramiko floor cold|warm|sleep 1`` (bench/floor_ssh.py): W long-lived processes
  (one per fleet worker) with paramiko and threads only: connect and ``uptime`` (C at
  once over all of them, as fleet's slots), ``uptime`` again on the live connections,
  ``sleep 1`` on every live connection at once. No CLI, Celery, Redis or fleet code.
- ``celery floor no-op`` (bench/floor_celery.py): fleet's own workers and publish path
  with a task that does nothing, from a submitter that is already up: one Celery task
  per host and the chord, with no SSH, no run store and no CLI start-up.

A fleet row cannot go below the floor of its kind; the gap between them is what fleet
adds (its CLI, its store, and Celery where it is not in the floor).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.children import Child, ask, ask_measured, stop
from bench.fleetrows import BenchFailure, Row, add_run, started_workers
from bench.measure import Timing, box_ticks, busy_share, sshd_cpu, tree_cpu
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet

HERE = Path(__file__).resolve().parent
FLOOR_COLD = "paramiko floor cold"
FLOOR_WARM = "paramiko floor warm"
FLOOR_SLEEP = "paramiko floor sleep 1"
FLOOR_CELERY = "celery floor no-op"
FLOOR_ROWS = (FLOOR_COLD, FLOOR_WARM, FLOOR_SLEEP, FLOOR_CELERY)
PHASES = {FLOOR_COLD: "cold", FLOOR_WARM: "warm", FLOOR_SLEEP: "sleep"}


def ssh_floor(
    rows: Mapping[str, Row],
    fleet: SSHFleet,
    processes: int,
    threads: int,
    env: Mapping[str, str],
    tmp: Path,
) -> None:
    """One cold, warm and ``sleep 1`` phase of the paramiko floor into `rows`, from
    `processes` new processes with `threads` threads each (fleet's workers and slots)."""
    hosts = fleet.hosts
    shares = [hosts[k::processes] for k in range(processes)]
    procs: list[Child] = []
    try:
        for k, share in enumerate(shares):
            spec = tmp / f"floor-ssh-{k}.json"
            spec.write_text(
                json.dumps(
                    {
                        "user": fleet.user,
                        "key": str(fleet.client_key),
                        "known_hosts": str(fleet.known_hosts),
                        "hosts": [[h.address, h.port] for h in share],
                    }
                )
            )
            argv = [sys.executable, str(HERE / "floor_ssh.py"), str(spec), str(threads)]
            procs.append(Child(argv, env))
        for label, phase in PHASES.items():
            pids = [p.pid for p in procs]
            cpu0 = sum(tree_cpu(p) for p in pids)
            s0, box0 = sshd_cpu(fleet), box_ticks()
            t0 = time.perf_counter()
            answers = ask(procs, phase)
            wall = time.perf_counter() - t0
            busy = busy_share(box0, box_ticks())
            cpu = sum(tree_cpu(p) for p in pids) - cpu0
            failures = [f for a in answers for f in a["failures"]]
            if failures or sum(a["ok"] for a in answers) != len(hosts):
                raise BenchFailure(f"{label}: " + "; ".join(failures[:10]))
            rows[label].timings.append(Timing(wall, cpu, {"box_busy": busy}))
            rows[label].sshd.append(sshd_cpu(fleet) - s0)
    finally:
        stop(procs)


def celery_floor(
    row: Row,
    env: Mapping[str, str],
    names: Sequence[str],
    concurrency: int,
    n: int,
    redis: RedisServer,
    repeat: int,
    log_dir: Path,
    pool: str = "threads",
) -> None:
    """`repeat` timed rounds of the Celery floor (after one untimed round) into `row`."""
    with started_workers(
        env, names, concurrency, log_dir, pool, app="bench.floor_celery"
    ) as workers:
        pids = [w.pid for w in workers]
        argv = [sys.executable, str(HERE / "floor_celery.py"), str(n)]
        submitter = Child(argv, env)
        try:
            (warmup,) = ask([submitter], "go")
            if warmup["ok"] != n:
                raise BenchFailure(f"{FLOOR_CELERY}: {warmup['ok']}/{n} tasks collected")
            for _ in range(repeat):
                answer, timing, commands = ask_measured(submitter, pids, redis)
                if answer["ok"] != n:
                    raise BenchFailure(f"{FLOOR_CELERY}: {answer['ok']}/{n} tasks collected")
                row.sshd.append(0.0)
                add_run(row, timing, commands, n, pids)
        finally:
            stop([submitter])
