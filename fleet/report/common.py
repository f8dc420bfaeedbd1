"""What every rendering shares: counts, durations, folded host names, failure reasons,
truncation notes, and the exit code a report means."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from fleet.errors import EXIT_HOSTS_FAILED, EXIT_OK
from fleet.inventory import noderange
from fleet.results import HostResult, RunReport, Status
from fleet.textsafe import make_visible_line


def all_counts(report: RunReport) -> dict[str, int]:
    """Counts by status with every status present (0 when none), in `Status` order."""
    counts = report.counts()
    return {s.value: counts.get(s.value, 0) for s in Status}


def exit_code(report: RunReport) -> int:
    """0 when every selected host ended `ok`, else 1 (`fleet.errors.EXIT_*`)."""
    if len(report.ok) == len(report.results) and report.is_complete:
        return EXIT_OK
    return EXIT_HOSTS_FAILED


def run_duration(report: RunReport) -> float | None:
    """Seconds from the run's creation to its end (or its last result), if known."""
    end = report.run.finished_at
    if end is None:
        ends = [r.finished_at for r in report.results if r.finished_at]
        end = max(ends, default=None)
    if end is None:
        return None
    try:
        seconds = (
            datetime.fromisoformat(end) - datetime.fromisoformat(report.run.created_at)
        ).total_seconds()
    except (TypeError, ValueError):
        return None
    return max(seconds, 0.0)


def fold_hosts(names: Sequence[str]) -> str:
    """Host names folded as ClusterShell's clubak does (``web[01-04,07]``), made visible."""
    return make_visible_line(noderange.fold_hosts(names))


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def failure_reason(result: HostResult) -> str:
    """Why a host is not ok, in one line."""
    if result.error:
        return make_visible_line(result.error)
    if result.exit_code is not None and result.exit_code != 0:
        return f"exit {result.exit_code}"
    return "-"


def truncation_notes(members: Sequence[HostResult]) -> list[str]:
    """``(stdout truncated: 5242880 bytes sent, 1048576 kept)``, per distinct size sent."""
    notes = []
    for stream in ("stdout", "stderr"):
        by_sent: dict[int, list[HostResult]] = {}
        for r in members:
            if getattr(r, f"{stream}_truncated"):
                by_sent.setdefault(getattr(r, f"{stream}_bytes"), []).append(r)
        for sent, hosts in by_sent.items():
            kept = getattr(hosts[0], f"{stream}_kept_bytes")
            if kept is None:  # a record from before the field: the text's own size
                kept = len(getattr(hosts[0], stream).encode("utf-8", "surrogatepass"))
            where = (
                "" if len(hosts) == len(members) else f" on {fold_hosts([h.host for h in hosts])}"
            )
            notes.append(f"({stream} truncated{where}: {sent} bytes sent, {kept} kept)")
    return notes
