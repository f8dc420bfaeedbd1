"""Renderings of a `RunReport`: text for people, JSON for scripts, HTML for sharing.

Rendering is pure: every function returns a string (or an int), the CLI prints it.
All host-provided text (output, error messages, host names) is passed through
`fleet.textsafe` first, so a host cannot repaint the operator's terminal.

JSON contract (``fleet run --json``, ``fleet report RUN_ID --json``)
--------------------------------------------------------------------
One JSON document (UTF-8, ending with a newline)::

    {
      "run_id": "r-20240101-abcd",        # the run's id
      "command": "uptime",                # the command as given
      "pattern": "web:&prod",             # the host pattern as given
      "state": "finished",                # running | finished | cancelled
      "started_at": "2024-01-01T10:00:00.000+00:00",   # ISO 8601, UTC
      "finished_at": "2024-01-01T10:00:03.200+00:00",  # null while running
      "counts": {"ok": 10, "failed": 1, ...},   # by status; every status present, 0 if none
      "hosts_total": 12,                  # hosts selected for the run
      "results": [                        # one object per host with a result, in the
        {                                 # run's host order (fewer than hosts_total
          "host": "web01",                # only while the run is still going)
          "address": "10.0.0.1",
          "status": "ok",                 # ok failed timeout unreachable auth_failed
                                          # hostkey_rejected error skipped cancelled lost
                                          # interrupted
          "exit_code": 0,                 # null when the command did not run to an end
          "stdout": "...", "stderr": "...",          # as kept (capped), UTF-8 decoded
          "stdout_truncated": false, "stderr_truncated": false,
          "stdout_bytes": 42, "stderr_bytes": 0,     # bytes the host sent, also past the cap
          "duration_s": 0.21,             # null when it never ran
          "started_at": "...", "finished_at": "...",
          "error": null,                  # why it is not ok, in an operator's words
          "worker": "w1@node",            # Celery node that ran it
          "connection_reused": true       # a pooled SSH connection was used
        }
      ]
    }

Text that was not valid UTF-8 on the host arrives replacement-decoded; any lone
surrogate left is written as U+FFFD, so the document is valid UTF-8 for every
parser. Non-finite numbers are written as null.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fleet import noderange
from fleet.errors import EXIT_HOSTS_FAILED, EXIT_OK, UsageError
from fleet.results import HostResult, RunRecord, RunReport, Status
from fleet.textsafe import make_visible_line

_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(value: Any) -> Any:
    """JSON-safe copy: lone surrogates become U+FFFD, NaN/inf become None."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {_clean(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# The contract's per-host keys, in order (``remote_kill_confirmed`` is for the store only).
_RESULT_KEYS = [
    "host",
    "address",
    "status",
    "exit_code",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "stdout_bytes",
    "stderr_bytes",
    "duration_s",
    "started_at",
    "finished_at",
    "error",
    "worker",
    "connection_reused",
]


def all_counts(report: RunReport) -> dict[str, int]:
    """Counts by status with every status present (0 when none), in `Status` order."""
    counts = report.counts()
    return {s.value: counts.get(s.value, 0) for s in Status}


def report_json_dict(report: RunReport) -> dict[str, Any]:
    """The JSON contract (see the module docstring) as a plain dict."""
    run = report.run
    order = {name: i for i, name in enumerate(run.hosts)}
    results = sorted(report.results, key=lambda r: order.get(r.host, len(order)))
    data: dict[str, Any] = {
        "run_id": run.run_id,
        "command": run.command,
        "pattern": run.pattern,
        "state": run.state,
        "started_at": run.created_at,
        "finished_at": run.finished_at,
        "counts": all_counts(report),
        "hosts_total": len(run.hosts),
        "results": [
            {key: row[key] for key in _RESULT_KEYS} for row in (r.to_dict() for r in results)
        ],
    }
    cleaned: dict[str, Any] = _clean(data)
    return cleaned


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def render_json(report: RunReport) -> str:
    """One JSON document (the contract in the module docstring), ending with a newline."""
    return _dumps(report_json_dict(report))


def render_html(report: RunReport) -> str:
    """A self-contained HTML page (inline CSS and SVG, no scripts, no network assets)."""
    from fleet.report_html import render_html as _render

    return _render(report)


def exit_code(report: RunReport) -> int:
    """0 when every selected host ended `ok`, else 1 (`fleet.errors.EXIT_*`)."""
    if len(report.ok) == len(report.results) and report.is_complete:
        return EXIT_OK
    return EXIT_HOSTS_FAILED


def runs_json(
    runs: Sequence[RunRecord], counts: Mapping[str, Mapping[str, int]] | None = None
) -> str:
    """`fleet runs --json`: a JSON list, newest first as given, one object per run."""
    counts = counts or {}
    doc = [
        {
            "run_id": run.run_id,
            "command": run.command,
            "pattern": run.pattern,
            "state": run.state,
            "started_at": run.created_at,
            "finished_at": run.finished_at,
            "user": run.user,
            "hosts_total": len(run.hosts),
            "counts": {s.value: int(counts.get(run.run_id, {}).get(s.value, 0)) for s in Status},
        }
        for run in runs
    ]
    return _dumps(_clean(doc))


def write_atomically(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that readers see the old file or the new one,
    never a part: a temporary file in the same directory, fsync, then `os.replace`.

    A new file is created private (mode 0600: reports hold host output); an existing
    file keeps its mode. Raises `UsageError` naming the path when it cannot be written;
    no temporary file is left behind.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    data = text.encode("utf-8", "replace")  # encode first: fail before touching the disk
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp_name, path.stat().st_mode & 0o7777)
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(directory)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse, which costs nothing.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
            kept = len(getattr(hosts[0], stream).encode("utf-8", "surrogatepass"))
            where = (
                "" if len(hosts) == len(members) else f" on {fold_hosts([h.host for h in hosts])}"
            )
            notes.append(f"({stream} truncated{where}: {sent} bytes sent, {kept} kept)")
    return notes


def render_text(
    report: RunReport, *, color: bool = False, width: int = 100, verbose: bool = False
) -> str:
    """The report for people: gathered outputs, failures, slowest hosts, a summary line."""
    from fleet.report_text import render_text as _render

    return _render(report, color=color, width=width, verbose=verbose)


def render_summary_line(report: RunReport) -> str:
    """``12 hosts: 10 ok, 1 failed, 1 unreachable in 3.2 s``."""
    from fleet.report_text import render_summary_line as _render

    return _render(report)


def render_runs(
    runs: Sequence[RunRecord],
    counts: Mapping[str, Mapping[str, int]] | None = None,
    *,
    color: bool = False,
) -> str:
    """The table printed by `fleet runs`."""
    from fleet.report_text import render_runs as _render

    return _render(runs, counts, color=color)
