"""fleet vs OpenSSH on N real sshd hosts on loopback: wall time, CPU, worker memory.

    python bench/run.py [--hosts 50,200,2000] [--workers 2] [--concurrency 64]
                        [--repeat 1] [--worker-concurrency K] [--pool threads]
                        [--no-sleep-row] [--no-floor]
                        [--profile DIR] [--json]

Per N: starts N sshd hosts, a private redis-server and W Celery workers (threads pool
unless ``--pool``, harness `CeleryWorker`), then times in one invocation

- ``openssh xargs -P64 (cold)``: ``xargs -P C ssh -o KexAlgorithms=<paramiko's kex> ...``
- ``fleet cold``: ``python -m fleet run uptime --group web --json``, fresh workers
- ``fleet warm``: the same command again at once (pooled connections reused)
- ``fleet warm (API, process up)``: the same through ``fleet.run()`` from a process
  already up (no interpreter start-up or imports), right after ``fleet warm``
- ``fleet warm sleep 1``: ``sleep 1`` on warm connections, W new workers with a thread
  for every host (after one untimed ``uptime`` run filling their pools)
- ``paramiko floor cold|warm|sleep 1``, ``celery floor no-op``: each part alone
  (bench/floor.py; skip with ``--no-floor``)
- ``openssh default kex``: the baseline with OpenSSH's own kex choice (informative)

It asserts nothing about time. Any host not ``ok`` makes it print the failures and exit 1.
The fleet side lives in bench/fleetrows.py, the table in bench/report.py; see
bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.apirow import api_row  # noqa: E402
from bench.fleetrows import (  # noqa: E402
    FLEET_API,
    FLEET_API_SLEEP,
    FLEET_COLD,
    FLEET_SLEEP,
    FLEET_WARM,
    SLEEP_COMMAND,
    BenchFailure,
    Row,
    cold_warm_pair,
    fleet_run,
    sleep_row,
    started_workers,
)
from bench.floor import (  # noqa: E402
    FLOOR_CELERY,
    FLOOR_COLD,
    FLOOR_SLEEP,
    FLOOR_WARM,
    celery_floor,
    ssh_floor,
)
from bench.measure import (  # noqa: E402
    negotiated_kex,
    openssh_default_kex,
    run_openssh,
    sshd_cpu,
)
from bench.report import SSH_COLD, SSH_DEFAULT, render, summarize  # noqa: E402
from tests.harness.redis_server import RedisServer  # noqa: E402
from tests.harness.sshd import SSHFleet  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="50,200,2000", help="comma-separated host counts")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="parallel connections: xargs -P, and fleet's threads over all workers",
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=None,
        help="threads per worker (default: concurrency / workers, rounded up)",
    )
    parser.add_argument(
        "--pool",
        choices=("threads", "gevent"),
        default="threads",
        help="the workers' Celery pool (-P); fleet worker's default is threads",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; median shown")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="after the timed runs, py-spy one worker over an extra cold+warm pair "
        "(collapsed stacks written to DIR)",
    )
    parser.add_argument(
        "--no-sleep-row",
        dest="sleep_row",
        action="store_false",
        help="skip the `fleet warm sleep 1` row (its own workers, a thread per host)",
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the floor rows (paramiko alone; fleet's Celery with a no-op task)",
    )
    parser.add_argument("--json", action="store_true", help="print figures as JSON")
    args = parser.parse_args(argv)
    args.host_counts = [int(n) for n in args.hosts.split(",") if n.strip()]
    if args.worker_concurrency is None:
        args.worker_concurrency = math.ceil(args.concurrency / args.workers)
    return args


def clean_environ() -> dict[str, str]:
    """This process's environment without FLEET_* (the bench sets its own), with
    bytecode caching on: an installed fleet has its .pyc files (pip compiles at install),
    while PYTHONDONTWRITEBYTECODE (set on some machines) would make every CLI and worker
    start compile fleet from source, ~55 ms more per command. (Not PYTHONPYCACHEPREFIX:
    it hides the installed libraries' own .pyc files.) .gitignore covers __pycache__."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@contextlib.contextmanager
def profiling(pid: int, out: Path) -> Iterator[None]:
    """py-spy (sampling, non-blocking) on `pid` while the block runs."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise BenchFailure("--profile needs py-spy (pip install py-spy)")
    argv = [spy, "record", "--pid", str(pid), "--nonblocking", "--threads"]
    argv += ["--rate", "200", "--format", "raw", "--output", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attach before the run starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench_one(n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    fleet = SSHFleet(tmp / "sshd", count=n)
    redis: RedisServer | None = None
    try:
        redis = RedisServer(tmp / "redis")
        inventory = fleet.write_inventory(tmp / "inventory.yaml")
        env = clean_environ()
        env.update(
            PYTHONPATH=str(REPO),
            FLEET_INVENTORY=str(inventory),
            FLEET_BROKER_URL=redis.url,
            FLEET_RESULT_BACKEND=redis.url,
            FLEET_KNOWN_HOSTS=str(fleet.known_hosts),
            FLEET_HOME=str(tmp / "home"),
            FLEET_SSH_CONFIG="none",
            # Opt-in: warm runs reuse every connection (README, "Host affinity").
            FLEET_HOST_AFFINITY="1",
        )
        kex, engine = negotiated_kex(fleet)
        default_kex = openssh_default_kex()
        hosts = fleet.hosts
        c = args.concurrency
        # Warm the page cache (ssh binary, python imports) and the bytecode cache, not
        # any connection.
        run_openssh(fleet, hosts[: min(8, n)], kex, c)
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(REPO / "fleet")],
            env=env,
            capture_output=True,
            check=False,
        )
        subprocess.run(
            [sys.executable, "-m", "fleet", "hosts", "--group", "web"],
            env=env,
            cwd=REPO,
            capture_output=True,
            check=False,
        )
        names = [f"benchw{k + 1}" for k in range(args.workers)]
        rows: dict[str, Row] = {
            SSH_COLD: Row(),
            FLEET_COLD: Row(),
            FLEET_WARM: Row(),
            FLEET_API: Row(),
        }
        for r in range(args.repeat):
            s0 = sshd_cpu(fleet)
            timing, failures = run_openssh(fleet, hosts, kex, c)
            rows[SSH_COLD].sshd.append(sshd_cpu(fleet) - s0)
            if failures:
                raise BenchFailure("OpenSSH baseline failed: " + "; ".join(failures))
            rows[SSH_COLD].timings.append(timing)
            # Fresh workers per repeat (new names: no registration of the last set is reused).
            ws = [f"{name}r{r + 1}" for name in names]
            cold_warm_pair(
                rows,
                env,
                ws,
                args.worker_concurrency,
                n,
                redis,
                fleet,
                tmp / "w",
                args.pool,
                then=lambda workers: api_row(rows[FLEET_API], env, workers, n, redis, fleet),
            )
        if args.sleep_row:
            rows[FLEET_SLEEP] = Row()
            rows[FLEET_API_SLEEP] = Row()
            sleep_row(
                rows[FLEET_SLEEP],
                env,
                args.workers,
                args.repeat,
                n,
                redis,
                fleet,
                tmp / "w",
                args.pool,
                then=lambda workers: api_row(
                    rows[FLEET_API_SLEEP],
                    env,
                    workers,
                    n,
                    redis,
                    fleet,
                    SLEEP_COMMAND,
                    FLEET_API_SLEEP,
                ),
            )
        if args.floor:
            for label in (FLOOR_COLD, FLOOR_WARM, FLOOR_SLEEP, FLOOR_CELERY):
                rows[label] = Row()
            for _ in range(args.repeat):
                ssh_floor(rows, fleet, args.workers, args.worker_concurrency, env, tmp)
            celery_floor(
                rows[FLOOR_CELERY],
                env,
                [f"{name}f" for name in names],
                args.worker_concurrency,
                n,
                redis,
                args.repeat,
                tmp / "w",
                args.pool,
            )
        s0 = sshd_cpu(fleet)
        timing, failures = run_openssh(fleet, hosts, None, c)
        sshd_default = sshd_cpu(fleet) - s0
        if failures:
            raise BenchFailure("OpenSSH default-kex baseline failed: " + "; ".join(failures))
        rows[SSH_DEFAULT.format(c=c)] = Row(timings=[timing], sshd=[sshd_default])
        profiles: dict[str, str] = {}
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            ps = [f"{name}p" for name in names]
            with started_workers(env, ps, args.worker_concurrency, tmp / "w", args.pool) as workers:
                for label in (FLEET_COLD, FLEET_WARM):
                    out = args.profile / f"worker-n{n}-{label.split()[1]}.txt"
                    with profiling(workers[0].pid, out):
                        fleet_run(env, workers, n)
                    profiles[label] = str(out)
        return summarize(n, args, kex, engine, default_kex, rows, profiles)
    finally:
        if redis is not None:
            redis.stop()
        fleet.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    for n in args.host_counts:
        with tempfile.TemporaryDirectory(prefix=f"fleet-bench-{n}-") as tmp:
            try:
                result = bench_one(n, args, Path(tmp))
            except BenchFailure as exc:
                print(f"bench: N={n}: {exc}", file=sys.stderr)
                return 1
        results.append(result)
        if not args.json:
            print(render(result), flush=True)
            print(flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
