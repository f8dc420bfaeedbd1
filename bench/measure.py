"""Measuring helpers for bench/run.py: CPU and memory from /proc, the negotiated kex,
and the OpenSSH baseline. No psutil: /proc and `resource` are enough on Linux."""

from __future__ import annotations

import logging
import os
import resource
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from tests.harness import procs
from tests.harness.sshd import SSHFleet, SSHHost

_TICKS = os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds (user+system) of every child this process has waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stat_cpu(pid: int) -> float:
    # /proc/PID/stat: the command name (field 2) may hold spaces, so split after ')'.
    # utime, stime, cutime, cstime are fields 14-17: the process and its reaped children.
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / _TICKS


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid`, the children it reaped, and its live descendants."""
    return _stat_cpu(pid) + sum(_stat_cpu(child) for child in procs._descendants(pid))


def tree_rss_mib(pid: int) -> float:
    """Resident memory (VmRSS) of `pid` and its live descendants, in MiB."""
    total_kib = 0
    for each in (pid, *procs._descendants(pid)):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def rss_total_mib(pids: Sequence[int]) -> float:
    """VmRSS of every process in `pids` and their live descendants, summed, in MiB."""
    return sum(tree_rss_mib(pid) for pid in pids)


def sshd_cpu(fleet: SSHFleet) -> float:
    """CPU seconds so far of every sshd of `fleet` and what they forked."""
    return sum(tree_cpu(pid) for pid in fleet.pids())


def redis_reset_stats(port: int) -> None:
    import redis

    with redis.Redis(host="127.0.0.1", port=port) as client:
        client.config_resetstat()


def redis_commands(port: int) -> dict[str, int]:
    """Calls per Redis command since the last reset (``INFO commandstats``)."""
    import redis

    with redis.Redis(host="127.0.0.1", port=port) as client:
        stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if name not in ("cmdstat_config", "cmdstat_info")
    }


def idle_cpu(pids: Sequence[int], seconds: float) -> float:
    """CPU seconds per second the processes burn while nothing is asked of them."""
    before = sum(tree_cpu(p) for p in pids)
    time.sleep(seconds)
    return (sum(tree_cpu(p) for p in pids) - before) / seconds


@dataclass(frozen=True, slots=True)
class Timing:
    wall: float
    cpu: float  # seconds, all processes of the tool under test
    detail: Mapping[str, float]  # cpu split (cli/workers), extra figures


def negotiated_kex(fleet: SSHFleet) -> tuple[str, str]:
    """(kex name, transport class) paramiko agrees with this sshd under its defaults.

    fleet's Connector changes only the host key algorithms, so a plain Transport with
    default security options negotiates what fleet's workers negotiate.
    """
    host = fleet.hosts[0]
    logger = logging.getLogger("bench.kex")
    names: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("Kex: "):
                names.append(message[5:].strip())

    handler = Grab(logging.DEBUG)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    sock = socket.create_connection((host.address, host.port), timeout=10)
    transport = paramiko.Transport(sock)
    try:
        transport.set_log_channel("bench.kex")
        transport.start_client(timeout=10)
    finally:
        transport.close()
        logger.removeHandler(handler)
    # Private class attributes (not in paramiko's stubs): kex name -> class, preference.
    info: dict[str, type] = getattr(paramiko.Transport, "_kex_info")  # noqa: B009
    if not names:
        # paramiko changed its log line: fall back to its first preferred kex.
        names = list(getattr(paramiko.Transport, "_preferred_kex")[:1])  # noqa: B009
    engine = info[names[0]].__name__
    return names[0], engine


def openssh_default_kex() -> str:
    """The first kex algorithm OpenSSH's client proposes by default (`ssh -G`)."""
    out = subprocess.run(
        ["ssh", "-F", "/dev/null", "-G", "localhost"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("kexalgorithms "):
            return line.split()[1].split(",")[0]
    return "?"


def ssh_argv(fleet: SSHFleet, kex: str | None) -> list[str]:
    argv = [
        "ssh",
        "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={fleet.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=10",
        "-i", str(fleet.client_key),
    ]  # fmt: skip
    if kex:
        argv += ["-o", f"KexAlgorithms={kex}"]
    return argv


def box_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine so far (/proc/stat, "cpu" line:
    user nice system idle iowait irq softirq steal; idle and iowait are not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    total = sum(fields)
    return total - fields[3] - fields[4], total


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share (0-1) of all cores busy between two `box_ticks` readings: what a run cost
    the machine, kernel work and short-lived processes (sshd sessions, shells) included,
    which per-process figures miss."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def run_openssh(
    fleet: SSHFleet, hosts: Sequence[SSHHost], kex: str | None, parallel: int
) -> tuple[Timing, list[str]]:
    """`xargs -P PARALLEL -L 1 ssh ... -p PORT user@addr uptime`; (timing, failures)."""
    lines = "".join(f"-p {h.port} {fleet.user}@{h.address} uptime\n" for h in hosts)
    argv = ["xargs", "-P", str(parallel), "-L", "1", *ssh_argv(fleet, kex)]
    cpu0 = children_cpu()
    box0 = box_ticks()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, input=lines, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    busy = busy_share(box0, box_ticks())
    cpu = children_cpu() - cpu0
    answered = sum("load average" in line for line in proc.stdout.splitlines())
    failures: list[str] = []
    if proc.returncode != 0 or answered != len(hosts):
        failures.append(
            f"xargs exit {proc.returncode}, {answered}/{len(hosts)} answered; "
            f"stderr: {proc.stderr.strip()[:2000]}"
        )
    return Timing(wall, cpu, {"box_busy": busy}), failures


def timed_child(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    workers: Sequence[int],
    redis_pid: int | None = None,
) -> tuple[Timing, subprocess.CompletedProcess[str]]:
    """Run `argv` to completion; CPU of it (RUSAGE_CHILDREN) and of the worker pids.

    `Timing.cpu` is CLI + workers; with `redis_pid`, ``detail["redis_cpu"]`` is what
    that redis-server spent meanwhile (its /proc stat, every thread of it)."""
    before = {pid: tree_cpu(pid) for pid in workers}
    redis0 = tree_cpu(redis_pid) if redis_pid is not None else 0.0
    cpu0 = children_cpu()
    box0 = box_ticks()
    t0 = time.perf_counter()
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, env=dict(env), cwd=cwd, timeout=1800
    )
    wall = time.perf_counter() - t0
    busy = busy_share(box0, box_ticks())
    cli_cpu = children_cpu() - cpu0
    worker_cpu = sum(tree_cpu(pid) - before[pid] for pid in workers)
    redis_cpu = tree_cpu(redis_pid) - redis0 if redis_pid is not None else 0.0
    detail = {
        "cli_cpu": cli_cpu,
        "worker_cpu": worker_cpu,
        "redis_cpu": redis_cpu,
        "box_busy": busy,
    }
    return Timing(wall, cli_cpu + worker_cpu, detail), proc
