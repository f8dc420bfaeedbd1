"""Text renderings for people: the run report and the `fleet runs` table.

Reached through `fleet.report` (render_text, render_summary_line, render_runs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleet.errors import EXIT_OK
from fleet.report.common import (
    exit_code,
    failure_reason,
    fold_hosts,
    format_seconds,
    run_duration,
    truncation_notes,
)
from fleet.results import STATUS_ORDER, HostResult, OutputGroup, RunRecord, RunReport, Status
from fleet.textsafe import make_visible, make_visible_line

# --- text ---------------------------------------------------------------------------

_BAD = "red"
_STYLES = dict.fromkeys(Status, _BAD) | {
    Status.OK: "green",
    Status.LOST: "magenta",
    Status.CANCELLED: "yellow",
}
_SLOWEST_SHOWN = 5


class _Doc:
    """Text pieces with a style each: joined plain, or rendered to ANSI by rich."""

    def __init__(self) -> None:
        self.pieces: list[tuple[str, str]] = []

    def add(self, text: str, style: str = "") -> None:
        self.pieces.append((text, style))

    def line(self, text: str = "", style: str = "") -> None:
        self.add(text + "\n", style)

    def render(self, *, color: bool, width: int) -> str:
        if not color:
            return "".join(text for text, _ in self.pieces)
        import io

        from rich.console import Console
        from rich.text import Text

        out = io.StringIO()
        console = Console(
            file=out,
            force_terminal=True,
            color_system="standard",
            width=width,
            highlight=False,
            markup=False,
            emoji=False,
            soft_wrap=True,
        )
        text = Text()
        for piece, style in self.pieces:
            text.append(piece, style=style or None)
        console.print(text, end="")
        return out.getvalue()


def _output_block(doc: _Doc, group: OutputGroup, members: Sequence[HostResult]) -> None:
    header = f"{fold_hosts(group.hosts)} ({len(group.hosts)})"
    style = "bold"
    if group.exit_code not in (0, None):
        header += f" exit {group.exit_code}"
        style = "bold red"
    if any(r.status is Status.TIMEOUT for r in members):
        header += " timed out"
        style = "bold red"
    rule = "-" * 15  # as clubak draws it, whatever the header length
    doc.line(rule, "dim")
    doc.line(header, style)
    doc.line(rule, "dim")
    if group.stdout:
        doc.add(_with_newline(make_visible(group.stdout)))
    if group.stderr:
        doc.line("[stderr]", "bold yellow")
        doc.add(_with_newline(make_visible(group.stderr)), "yellow")
    if not group.stdout and not group.stderr:
        doc.line("(no output)", "dim")
    for note in truncation_notes(members):
        doc.line(note, "yellow")


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _failures(doc: _Doc, failed: Sequence[HostResult], verbose: bool) -> None:
    rows: dict[tuple[Status, str], list[str]] = {}
    for r in failed:
        key = (r.status, failure_reason(r))
        if verbose:
            key = (r.status, f"{key[1]}\0{r.host}")  # one row per host
        rows.setdefault(key, []).append(r.host)
    order = {s: i for i, s in enumerate(STATUS_ORDER)}
    table = [
        (fold_hosts(hosts), status, reason.split("\0")[0])
        for (status, reason), hosts in sorted(rows.items(), key=lambda kv: order[kv[0][0]])
    ]
    host_w = min(40, max(len(h) for h, _, _ in table))
    status_w = max(len(s.value) for _, s, _ in table)
    doc.line("failures:", "bold")
    for hosts, status, reason in table:
        doc.add(f"  {hosts.ljust(host_w)}  ")
        doc.add(status.value.ljust(status_w), _STYLES[status])
        doc.line(f"  {reason}".rstrip())


def _host_table(doc: _Doc, report: RunReport) -> None:
    batched = bool(report.run.batches)  # a rolling run: which batch each host was in
    batch = {name: i for i, names in enumerate(report.run.batches, start=1) for name in names}
    rows: list[tuple[str, ...]] = [
        ("HOST", "STATUS", *(["BATCH"] if batched else []), "EXIT", "DURATION", "WORKER",
         "REUSED", "ADDRESS")
    ]  # fmt: skip
    for r in report.results:
        rows.append(
            (
                make_visible_line(r.host),
                r.status.value,
                *([str(batch.get(r.host, "-"))] if batched else []),
                "-" if r.exit_code is None else str(r.exit_code),
                format_seconds(r.duration_s),
                make_visible_line(r.worker or "-"),
                "yes" if r.connection_reused else "no",
                make_visible_line(r.address or "-"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        doc.line(line, "bold" if n == 0 else "")


def render_text(
    report: RunReport,
    *,
    color: bool = False,
    width: int = 100,
    verbose: bool = False,
    header: bool = False,
) -> str:
    """The report for a person: gathered outputs, failures, slowest hosts, a summary;
    with `header`, first what the run was (``fleet report``: id, command, pattern,
    state, who, when).

    With ``color=False`` the result holds no escape sequence at all; with ``color=True``
    only rich's own styling ones (host text is made visible first either way).
    """
    doc = _Doc()
    if header:
        _header(doc, report.run)
    by_host = {r.host: r for r in report.results}
    for group in report.gathered():
        _output_block(doc, group, [by_host[h] for h in group.hosts])
    if report.failed:
        doc.line()
        _failures(doc, report.failed, verbose)
    if verbose and report.results:
        doc.line()
        _host_table(doc, report)
    slowest = report.slowest(_SLOWEST_SHOWN)
    if len(report.results) > _SLOWEST_SHOWN and slowest:
        doc.line()
        doc.line("slowest:", "bold")
        name_w = max(len(make_visible_line(r.host)) for r in slowest)
        for r in slowest:
            doc.line(f"  {make_visible_line(r.host).ljust(name_w)}  {format_seconds(r.duration_s)}")
    doc.line()
    doc.line(render_summary_line(report), "bold green" if exit_code(report) == EXIT_OK else "bold")
    return doc.render(color=color, width=width)


def _header(doc: _Doc, run: RunRecord) -> None:
    by = f"schedule {run.schedule} ({run.user})" if run.schedule else run.user or "-"
    ended = f", finished {_short_time(run.finished_at)}" if run.finished_at else ""
    rows = [
        ("run", run.run_id),
        ("command", run.command),
        ("pattern", run.pattern),
        ("state", f"{run.state} ({len(run.hosts)} host{'' if len(run.hosts) == 1 else 's'})"),
        ("by", by),
        ("when", f"started {_short_time(run.created_at)} UTC{ended}"),
    ]
    rolling = [f"{len(run.batches)} batches"] if run.batches else []
    rolling += [f"max-fail {run.max_fail}"] if run.max_fail is not None else []
    rolling += [f"fanout {run.fanout}"] if run.fanout else []
    if rolling:
        rows.append(("rollout", ", ".join(rolling)))
    for label, value in rows:
        doc.line(f"{label + ':':<9}{make_visible_line(value)}")
    doc.line()


def render_summary_line(report: RunReport) -> str:
    """``12 hosts: 10 ok, 1 failed, 1 unreachable in 3.2 s`` (no newline)."""
    total = max(len(report.run.hosts), len(report.results))
    counts = report.counts()
    parts = [f"{counts[Status.OK.value]} ok"] if Status.OK.value in counts else []
    parts += [f"{n} {status}" for status, n in counts.items() if status != Status.OK.value]
    pending = total - len(report.results)
    if pending > 0:
        parts.append(f"{pending} pending")
    line = f"{total} host{'' if total == 1 else 's'}"
    if parts:
        line += ": " + ", ".join(parts)
    duration = run_duration(report)
    if duration is not None:
        line += f" in {format_seconds(duration)}"
    return line


def _short_time(iso: str | None) -> str:
    return make_visible_line((iso or "-").replace("T", " ")[:19])


def render_runs(
    runs: Sequence[RunRecord],
    counts: Mapping[str, Mapping[str, int]] | None = None,
    *,
    color: bool = False,
    host_status: Mapping[str, str] | None = None,
) -> str:
    """The table for ``fleet runs``: id, start, state, hosts, results by status, who
    submitted it (``schedule: NAME`` for Celery beat's firings), command; with
    `host_status` (``fleet runs --host H``) H's own status in each run after the state."""
    if not runs:
        return "no runs\n"
    counts = counts or {}
    rows: list[tuple[str, ...]] = [
        ("RUN ID", "STARTED (UTC)", "STATE", "HOSTS", "RESULTS", "BY", "COMMAND")
    ]
    for run in runs:
        by_status = counts.get(run.run_id, {})
        results = ", ".join(
            f"{by_status[s.value]} {s.value}"
            for s in (Status.OK, *STATUS_ORDER[:-1])
            if by_status.get(s.value)
        )
        command = make_visible_line(run.command)
        if len(command) > 60:
            command = command[:59] + "…"
        rows.append(
            (
                make_visible_line(run.run_id),
                _short_time(run.created_at),
                make_visible_line(run.state),
                str(len(run.hosts)),
                results or "-",
                make_visible_line(f"schedule: {run.schedule}" if run.schedule else run.user or "-"),
                command,
            )
        )
    if host_status is not None:
        column = ["HOST"] + [make_visible_line(host_status.get(r.run_id, "-")) for r in runs]
        rows = [(*row[:3], cell, *row[3:]) for row, cell in zip(rows, column, strict=True)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    doc = _Doc()
    for n, row in enumerate(rows):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        doc.line(line, "bold" if n == 0 else "")
    return doc.render(color=color, width=max(100, sum(widths) + 2 * len(widths)))


def render_schedules(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table for ``fleet schedules``: one row per schedule (its ``--json`` objects)."""
    table: list[tuple[str, ...]] = [
        ("SCHEDULE", "WHEN", "PATTERN", "NEXT (UTC)", "LAST RUN", "COMMAND")
    ]
    for row in rows:
        last = row.get("last_run")
        outcome = "-"
        if last:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(last["counts"].items()) if n)
            outcome = f"{last['run_id']} {last['state']}" + (f" ({counts})" if counts else "")
        next_at = str(row["next_firing"])[:19].replace("T", " ")
        cells = (row["name"], row["when"], row["group"], next_at, outcome, row["command"])
        table.append(tuple(make_visible_line(str(c)) for c in cells))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join(lines) + "\n"
