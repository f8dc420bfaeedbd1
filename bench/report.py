"""bench/run.py's figures: medians per row (`summarize`, the ``--json`` document) and
the text table with its summary lines (`render`)."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.fleetrows import (
    CPU_TARGET_MS,
    FLEET_API,
    FLEET_API_SLEEP,
    FLEET_COLD,
    FLEET_SLEEP,
    FLEET_WARM,
    MAX_THREADS_PER_WORKER,
    SLEEP_TARGET_HOSTS,
    SLEEP_TARGET_WALL_S,
    SLOT_MARGIN,
    Row,
)
from bench.floor import FLOOR_CELERY, FLOOR_COLD, FLOOR_SLEEP, FLOOR_WARM

SSH_COLD = "openssh xargs -P{c} (cold)"
SSH_DEFAULT = "openssh xargs -P{c} (default kex)"


COMMANDS = {
    FLEET_SLEEP: "sleep 1",
    FLEET_API_SLEEP: "sleep 1",
    FLOOR_SLEEP: "sleep 1",
    FLOOR_CELERY: "no-op",
}
#: Each fleet row and the floor of its kind (bench/floor.py).
FLOOR_OF = {
    FLEET_COLD: FLOOR_COLD,
    FLEET_WARM: FLOOR_WARM,
    FLEET_API: FLOOR_WARM,
    FLEET_SLEEP: FLOOR_SLEEP,
    FLEET_API_SLEEP: FLOOR_SLEEP,
}


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(
    n: int,
    args: argparse.Namespace,
    kex: str,
    engine: str,
    default_kex: str,
    rows: Mapping[str, Row],
    profiles: Mapping[str, str],
) -> dict[str, Any]:
    base = rows[SSH_COLD].timings
    base_wall = _median([t.wall for t in base])
    base_cpu = _median([t.cpu for t in base])
    order = [SSH_COLD, FLEET_COLD, FLEET_WARM, FLEET_API, FLEET_SLEEP, FLEET_API_SLEEP]
    order += [k for k in rows if k not in order]
    out_rows = []
    for label in order:
        if label not in rows:
            continue
        data = rows[label]
        timings = data.timings
        wall = _median([t.wall for t in timings])
        cpu = _median([t.cpu for t in timings])
        row: dict[str, Any] = {
            "row": label.format(c=args.concurrency),
            "command": COMMANDS.get(label, "uptime"),
            "wall_s": wall,
            "wall_s_all": [t.wall for t in timings],
            "hosts_per_s": n / wall,
            "cpu_s": cpu,
            "cpu_s_per_host": cpu / n,
            "wall_ratio_vs_openssh_cold": wall / base_wall,
            "cpu_ratio_vs_openssh_cold": cpu / base_cpu if base_cpu else None,
            "sshd_cpu_s_per_host": _median(data.sshd) / n,
            "box_busy_pct": 100 * _median([t.detail.get("box_busy", 0.0) for t in timings]),
        }
        if label.startswith("fleet") or label == FLOOR_CELERY:
            for part in ("cli", "worker", "redis"):
                row[f"{part}_cpu_s"] = _median([t.detail[f"{part}_cpu"] for t in timings])
            for name, values in data.figures.items():
                row[name] = _median(values)
            row["redis_top"] = data.redis_top
            row["fleet_cpu_target_ms_per_host"] = CPU_TARGET_MS.get(label)
            row.update(data.info)
        if label in (FLEET_SLEEP, FLEET_API_SLEEP):
            row["wall_target_s"] = SLEEP_TARGET_WALL_S if n == SLEEP_TARGET_HOSTS else None
        out_rows.append(row)
    return {
        "hosts": n,
        "workers": args.workers,
        "threads_per_worker": args.worker_concurrency,
        "pool": args.pool,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "kex": kex,
        "kex_engine": engine,
        "openssh_default_kex": default_kex,
        "targets": {
            "fleet_cpu_ms_per_host_cold": CPU_TARGET_MS[FLEET_COLD],
            "fleet_cpu_ms_per_host_warm": CPU_TARGET_MS[FLEET_WARM],
            "sleep_wall_s": SLEEP_TARGET_WALL_S,
            "sleep_hosts": SLEEP_TARGET_HOSTS,
        },
        "rows": out_rows,
        "profiles": dict(profiles),
    }


def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else "not met"


def _span(row: Mapping[str, Any]) -> str:
    if "run_span_s" not in row:  # the API row: no CLI
        return f"fleet.run() to report {row['wall_s']:.2f} s; "
    return f"run span {row['run_span_s']:.2f} s (CLI wall {row['wall_s']:.2f} s); "


def _fleet_lines(row: Mapping[str, Any], n: int) -> list[str]:
    label = row["row"]
    cpu_ms = row["fleet_cpu_ms_per_host"]
    target = row.get("fleet_cpu_target_ms_per_host")
    kind = "cold" if label == FLEET_COLD else "warm"
    aim = f" (target <= {target:.0f} ms/host {kind}: {_verdict(cpu_ms, target)})" if target else ""
    top = ", ".join(f"{name} {calls}" for name, calls in row["redis_top"][:6])
    lines = [
        f"  {label}: CPU {'submitter' if label in (FLEET_API, FLEET_API_SLEEP) else 'cli'} "
        f"{row['cli_cpu_s']:.2f} s + workers {row['worker_cpu_s']:.2f} s"
        f" + redis {row['redis_cpu_s']:.2f} s = {cpu_ms:.1f} ms/host{aim}",
        f"    {_span(row)}connections reused {row['connections_reused']:.0f}/{n}; "
        f"redis commands/host {row['redis_commands_per_host']:.1f} ({top})",
    ]
    if "worker_kib_per_connection" in row:
        lines.append(
            f"    worker memory: {row['worker_rss_start_mib']:.0f} MiB at start -> "
            f"{row['worker_rss_total_mib']:.0f} MiB (all workers), "
            f"{row['connections_held']:.0f} connections held: "
            f"{row['worker_kib_per_connection']:.0f} KiB/connection; "
            f"workers idle afterwards {row['worker_idle_cpu_s_per_s']:.3f} CPU s/s"
        )
    if label == FLEET_API_SLEEP and row.get("wall_target_s") is not None:
        target_s = row["wall_target_s"]
        lines.append(
            f"    sleep 1 warm through the API: wall {row['wall_s']:.2f} s "
            f"(target <= {target_s:.1f} s: {_verdict(row['wall_s'], target_s)}); "
            "the workers of the row above"
        )
    if "threads_per_worker" in row:
        capped = (
            f", CAPPED at {MAX_THREADS_PER_WORKER} (wanted {row['threads_wanted']})"
            if row["threads_capped"]
            else ""
        )
        if row.get("wall_target_s") is not None:
            target_s = row["wall_target_s"]
            aim = f"target <= {target_s:.1f} s: {_verdict(row['wall_s'], target_s)}"
        else:
            aim = f"issue target <= {SLEEP_TARGET_WALL_S:.1f} s at N={SLEEP_TARGET_HOSTS}"
        lines += [
            f"    sleep 1 warm: wall {row['wall_s']:.2f} s ({aim}); "
            f"{row['workers']} workers x {row['threads_per_worker']} threads "
            f"(busiest worker {row['busiest_worker_hosts']} hosts + {SLOT_MARGIN}{capped})",
            f"    its workers: {row['fill_rss_start_mib']:.0f} MiB at start -> "
            f"{row['fill_rss_mib']:.0f} MiB after the untimed uptime run "
            f"({row['fill_connections_reused']}/{n} reused): "
            f"{row['kib_per_host_with_thread']:.0f} KiB/host (connection + pool thread)",
        ]
    return lines


def render(result: Mapping[str, Any]) -> str:
    n = result["hosts"]
    slots = "threads" if result["pool"] == "threads" else f"{result['pool']} greenlets"
    lines = [
        f"N={n} hosts; fleet: {result['workers']} workers x {result['threads_per_worker']} "
        f"{slots}; openssh: xargs -P{result['concurrency']}; median of {result['repeat']}",
        f"kex: {result['kex']} (paramiko {result['kex_engine']}; "
        f"OpenSSH default would be {result['openssh_default_kex']})",
        f"{'':<38} {'wall s':>7} {'hosts/s':>8} {'CPU s/host':>10} {'wall x':>7} "
        f"{'CPU x':>6} {'sshd CPU/host':>13} {'+Redis ms/host':>14} "
        f"{'redis cmd/host':>14} {'worker RSS MiB':>14} {'box busy':>8}",
    ]
    for row in result["rows"]:
        fleet = "fleet_cpu_ms_per_host" in row
        cpu_x = row["cpu_ratio_vs_openssh_cold"]
        # `sleep 1` against OpenSSH's `uptime`: a wall ratio would mean nothing.
        wall_x = f"{row['wall_ratio_vs_openssh_cold']:.2f}x" if row["command"] == "uptime" else "-"
        with_redis = f"{row['fleet_cpu_ms_per_host']:.1f}" if fleet else "-"
        commands = f"{row['redis_commands_per_host']:.1f}" if fleet else "-"
        rss = f"{row['worker_rss_mib']:.0f}" if fleet else "-"
        lines.append(
            f"{row['row']:<38} {row['wall_s']:>7.2f} {row['hosts_per_s']:>8.1f} "
            f"{row['cpu_s_per_host']:>10.4f} {wall_x:>7} "
            f"{(f'{cpu_x:.2f}x' if cpu_x else '-'):>6} "
            f"{row['sshd_cpu_s_per_host']:>13.4f} {with_redis:>14} {commands:>14} {rss:>14} "
            f"{row['box_busy_pct']:>7.0f}%"
        )
    for row in result["rows"]:
        if row["row"] == FLOOR_CELERY:
            lines += _celery_floor_lines(row, n)
        elif "fleet_cpu_ms_per_host" in row:
            lines += _fleet_lines(row, n)
    lines += _floor_lines(result["rows"])
    for label, path in result["profiles"].items():
        lines.append(f"  py-spy {label}: {path}")
    return "\n".join(lines)


def _celery_floor_lines(row: Mapping[str, Any], n: int) -> list[str]:
    top = ", ".join(f"{name} {calls}" for name, calls in row["redis_top"][:6])
    return [
        f"  {row['row']}: CPU submitter {row['cli_cpu_s']:.2f} s + workers "
        f"{row['worker_cpu_s']:.2f} s + redis {row['redis_cpu_s']:.2f} s = "
        f"{row['fleet_cpu_ms_per_host']:.1f} ms/host; publish to callback result "
        f"{row['wall_s']:.2f} s (submitter already up); redis commands/host "
        f"{row['redis_commands_per_host']:.1f} ({top})",
    ]


def _floor_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each fleet row against the floor of its kind: the wall fleet adds, and the best
    ratio to OpenSSH the part alone reaches on this box."""
    by_label = {row["row"]: row for row in rows}
    lines = []
    for fleet_label, floor_label in FLOOR_OF.items():
        fleet_row, floor_row = by_label.get(fleet_label), by_label.get(floor_label)
        if fleet_row is None or floor_row is None:
            continue
        gap = fleet_row["wall_s"] - floor_row["wall_s"]
        cpu_gap = (fleet_row["cpu_s_per_host"] - floor_row["cpu_s_per_host"]) * 1000
        if floor_row["command"] == "uptime":
            ratio = floor_row["wall_ratio_vs_openssh_cold"]
            reach = f"{ratio:.2f}x OpenSSH, OpenSSH/floor {1 / ratio:.2f}x"
        else:
            reach = f"{floor_row['wall_s']:.2f} s"
        api = fleet_label in (FLEET_API, FLEET_API_SLEEP)
        who = "submitter" if api else "CLI, its start-up included"
        lines.append(
            f"  {floor_label}: {reach}; {fleet_label} adds {gap:+.2f} s of wall "
            f"and {cpu_gap:+.1f} ms/host of CPU ({who}, workers; Redis not counted)"
        )
    return lines
