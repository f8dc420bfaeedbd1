"""fleet vs OpenSSH on N real sshd hosts on loopback: wall time, CPU, worker memory.

    python bench/run.py [--hosts 50,200] [--workers 2] [--concurrency 64] [--repeat 1]
                        [--worker-concurrency K] [--profile DIR] [--json]

Per N: starts N sshd hosts, a private redis-server and W Celery workers (threads pool,
harness `CeleryWorker`), then times in one invocation

- ``openssh xargs -P64 (cold)``: ``xargs -P C ssh -o KexAlgorithms=<paramiko's kex> ...``
- ``fleet cold``: ``python -m fleet run uptime --group web --json``, fresh workers
- ``fleet warm``: the same command again at once (pooled connections reused)
- ``openssh default kex``: the baseline with OpenSSH's own kex choice (informative)

It asserts nothing about time. Any host not ``ok`` makes it print the failures and exit 1.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.measure import (  # noqa: E402
    Timing,
    idle_cpu,
    negotiated_kex,
    openssh_default_kex,
    redis_commands,
    redis_reset_stats,
    run_openssh,
    sshd_cpu,
    timed_child,
    tree_rss_mib,
)
from tests.harness.redis_server import RedisServer  # noqa: E402
from tests.harness.sshd import SSHFleet  # noqa: E402
from tests.harness.workers import CeleryWorker  # noqa: E402

SSH_COLD = "openssh xargs -P{c} (cold)"
SSH_DEFAULT = "openssh xargs -P{c} (default kex)"
FLEET_COLD = "fleet cold"
FLEET_WARM = "fleet warm"
IDLE_SAMPLE_S = 2.0


class BenchFailure(Exception):
    """A host was not ok, or a tool failed: the figures would be meaningless."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="50,200", help="comma-separated host counts")
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
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; median shown")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="after the timed runs, py-spy one worker over an extra cold+warm pair "
        "(collapsed stacks written to DIR)",
    )
    parser.add_argument("--json", action="store_true", help="print figures as JSON")
    args = parser.parse_args(argv)
    args.host_counts = [int(n) for n in args.hosts.split(",") if n.strip()]
    if args.worker_concurrency is None:
        args.worker_concurrency = math.ceil(args.concurrency / args.workers)
    return args


def clean_environ() -> dict[str, str]:
    """This process's environment without FLEET_* (the bench sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}


@contextlib.contextmanager
def started_workers(
    env: Mapping[str, str], count: int, concurrency: int, log_dir: Path, tag: str
) -> Iterator[list[CeleryWorker]]:
    workers: list[CeleryWorker] = []
    try:
        for k in range(count):
            workers.append(
                CeleryWorker(
                    env,
                    queues=("fleet",),
                    name=f"bench{tag}w{k + 1}",
                    concurrency=concurrency,
                    log_dir=log_dir,
                )
            )
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def fleet_run(
    env: Mapping[str, str], workers: Sequence[CeleryWorker], n: int
) -> tuple[Timing, dict[str, Any]]:
    """One `python -m fleet run uptime --group web --json`; raises `BenchFailure` unless
    every host is ok."""
    argv = [sys.executable, "-m", "fleet", "run", "uptime", "--group", "web", "--json"]
    timing, proc = timed_child(argv, env, REPO, [w.pid for w in workers])
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BenchFailure(
            f"fleet run exit {proc.returncode}, no JSON report:\n{proc.stderr[-3000:]}"
        ) from None
    results = doc.get("results", [])
    bad = [r for r in results if r.get("status") != "ok"]
    if proc.returncode != 0 or bad or len(results) != n:
        lines = [f"fleet run exit {proc.returncode}, {len(results)}/{n} results"]
        lines += [f"  {r['host']}: {r['status']}: {r.get('error')}" for r in bad[:50]]
        if proc.stderr.strip():
            lines.append("stderr: " + proc.stderr.strip()[-2000:])
        raise BenchFailure("\n".join(lines))
    return timing, doc


def _span(doc: Mapping[str, Any]) -> float:
    from datetime import datetime

    start = datetime.fromisoformat(doc["started_at"])
    end = datetime.fromisoformat(doc["finished_at"])
    return (end - start).total_seconds()


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
        # Warm the page cache (ssh binary, python imports), not any connection.
        run_openssh(fleet, hosts[: min(8, n)], kex, c)
        subprocess.run(
            [sys.executable, "-m", "fleet", "hosts", "--group", "web"],
            env=env,
            cwd=REPO,
            capture_output=True,
            check=False,
        )
        rows: dict[str, list[Timing]] = {SSH_COLD: [], FLEET_COLD: [], FLEET_WARM: []}
        # Per fleet row, per figure, one value per repeat.
        extras: dict[str, dict[str, list[float]]] = {FLEET_COLD: {}, FLEET_WARM: {}}
        # CPU of the sshd side (listeners, per-connection processes, the shells they run).
        sshd: dict[str, list[float]] = {SSH_COLD: [], FLEET_COLD: [], FLEET_WARM: []}
        for r in range(args.repeat):
            s0 = sshd_cpu(fleet)
            timing, failures = run_openssh(fleet, hosts, kex, c)
            sshd[SSH_COLD].append(sshd_cpu(fleet) - s0)
            if failures:
                raise BenchFailure("OpenSSH baseline failed: " + "; ".join(failures))
            rows[SSH_COLD].append(timing)
            with started_workers(
                env, args.workers, args.worker_concurrency, tmp / "workers", str(r)
            ) as workers:
                pids = [w.pid for w in workers]
                for label in (FLEET_COLD, FLEET_WARM):
                    redis_reset_stats(redis.port)
                    s0 = sshd_cpu(fleet)
                    timing, doc = fleet_run(env, workers, n)
                    sshd[label].append(sshd_cpu(fleet) - s0)
                    commands = redis_commands(redis.port)
                    rows[label].append(timing)
                    figures = {
                        "worker_rss_mib": max(tree_rss_mib(p) for p in pids),
                        "connections_reused": sum(
                            bool(x.get("connection_reused")) for x in doc["results"]
                        ),
                        "run_span_s": _span(doc),
                        "redis_commands_per_host": sum(commands.values()) / n,
                        "worker_idle_cpu_s_per_s": idle_cpu(pids, IDLE_SAMPLE_S),
                    }
                    for name, value in figures.items():
                        extras[label].setdefault(name, []).append(value)
                    top = sorted(commands.items(), key=lambda kv: -kv[1])[:8]
                    extras[label]["redis_top"] = top  # type: ignore[assignment]
        s0 = sshd_cpu(fleet)
        timing, failures = run_openssh(fleet, hosts, None, c)
        sshd_default = sshd_cpu(fleet) - s0
        if failures:
            raise BenchFailure("OpenSSH default-kex baseline failed: " + "; ".join(failures))
        default_label = SSH_DEFAULT.format(c=c)
        rows[default_label] = [timing]
        sshd[default_label] = [sshd_default]
        profiles: dict[str, str] = {}
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            with started_workers(env, args.workers, args.worker_concurrency, tmp / "w", "p") as ws:
                for label in (FLEET_COLD, FLEET_WARM):
                    out = args.profile / f"worker-n{n}-{label.split()[1]}.txt"
                    with profiling(ws[0].pid, out):
                        fleet_run(env, ws, n)
                    profiles[label] = str(out)
        return summarize(n, args, kex, engine, default_kex, rows, sshd, extras, profiles)
    finally:
        if redis is not None:
            redis.stop()
        fleet.stop()


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(
    n: int,
    args: argparse.Namespace,
    kex: str,
    engine: str,
    default_kex: str,
    rows: Mapping[str, list[Timing]],
    sshd: Mapping[str, list[float]],
    extras: Mapping[str, Mapping[str, list[Any]]],
    profiles: Mapping[str, str],
) -> dict[str, Any]:
    base = rows[SSH_COLD]
    base_wall = _median([t.wall for t in base])
    base_cpu = _median([t.cpu for t in base])
    out_rows = []
    order = [SSH_COLD, FLEET_COLD, FLEET_WARM] + [
        k for k in rows if k.startswith("openssh") and k != SSH_COLD
    ]
    for label in order:
        timings = rows[label]
        wall = _median([t.wall for t in timings])
        cpu = _median([t.cpu for t in timings])
        row: dict[str, Any] = {
            "row": label.format(c=args.concurrency),
            "wall_s": wall,
            "wall_s_all": [t.wall for t in timings],
            "hosts_per_s": n / wall,
            "cpu_s": cpu,
            "cpu_s_per_host": cpu / n,
            "wall_ratio_vs_openssh_cold": wall / base_wall,
            "cpu_ratio_vs_openssh_cold": cpu / base_cpu if base_cpu else None,
            "sshd_cpu_s_per_host": _median(sshd[label]) / n,
        }
        if label in extras:
            row["cli_cpu_s"] = _median([t.detail["cli_cpu"] for t in timings])
            row["worker_cpu_s"] = _median([t.detail["worker_cpu"] for t in timings])
            for name, values in extras[label].items():
                row[name] = values if name == "redis_top" else _median(values)
        out_rows.append(row)
    return {
        "hosts": n,
        "workers": args.workers,
        "threads_per_worker": args.worker_concurrency,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "kex": kex,
        "kex_engine": engine,
        "openssh_default_kex": default_kex,
        "rows": out_rows,
        "profiles": dict(profiles),
    }


def render(result: Mapping[str, Any]) -> str:
    n = result["hosts"]
    lines = [
        f"N={n} hosts; fleet: {result['workers']} workers x {result['threads_per_worker']} "
        f"threads; openssh: xargs -P{result['concurrency']}; median of {result['repeat']}",
        f"kex: {result['kex']} (paramiko {result['kex_engine']}; "
        f"OpenSSH default would be {result['openssh_default_kex']})",
    ]
    header = (
        f"{'':<34} {'wall s':>7} {'hosts/s':>8} {'CPU s/host':>10} "
        f"{'wall x':>7} {'CPU x':>6} {'sshd CPU/host':>13} {'worker RSS MiB':>14}"
    )
    lines.append(header)
    for row in result["rows"]:
        rss = f"{row['worker_rss_mib']:.0f}" if "worker_rss_mib" in row else "-"
        cpu_x = row["cpu_ratio_vs_openssh_cold"]
        lines.append(
            f"{row['row']:<34} {row['wall_s']:>7.2f} {row['hosts_per_s']:>8.1f} "
            f"{row['cpu_s_per_host']:>10.4f} {row['wall_ratio_vs_openssh_cold']:>6.2f}x "
            f"{(f'{cpu_x:.2f}x' if cpu_x else '-'):>6} "
            f"{row['sshd_cpu_s_per_host']:>13.4f} {rss:>14}"
        )
    for row in result["rows"]:
        if "connections_reused" in row:
            top = ", ".join(f"{name} {calls}" for name, calls in row["redis_top"][:6])
            lines.append(
                f"  {row['row']}: CPU cli {row['cli_cpu_s']:.2f} s + workers "
                f"{row['worker_cpu_s']:.2f} s; run span {row['run_span_s']:.2f} s; "
                f"connections reused {row['connections_reused']:.0f}/{n}\n"
                f"    redis commands/host {row['redis_commands_per_host']:.1f} ({top}); "
                f"workers idle afterwards {row['worker_idle_cpu_s_per_s']:.3f} CPU s/s"
            )
    for label, path in result["profiles"].items():
        lines.append(f"  py-spy {label}: {path}")
    return "\n".join(lines)


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
