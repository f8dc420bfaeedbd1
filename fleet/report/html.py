"""The HTML rendering of a `RunReport`: one self-contained page.

No scripts and no network assets (inline CSS, charts as inline SVG drawn here),
and a Content-Security-Policy that forbids loading anything, so the page can be
mailed or attached to a ticket and opened safely. Every string that a host or an
inventory provided is made visible (control characters) and then HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from fleet.report.common import (
    all_counts,
    failure_reason,
    fold_hosts,
    format_seconds,
    truncation_notes,
)
from fleet.report.text import render_summary_line
from fleet.results import STATUS_ORDER, HostResult, RunReport, Status
from fleet.textsafe import make_visible, make_visible_line

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_COLORS = {
    Status.OK: "#2e7d32",
    Status.FAILED: "#c62828",
    Status.TIMEOUT: "#ef6c00",
    Status.UNREACHABLE: "#d84315",
    Status.AUTH_FAILED: "#ad1457",
    Status.HOSTKEY_REJECTED: "#6a1b9a",
    Status.ERROR: "#b71c1c",
    Status.LOST: "#5d4037",
    Status.CANCELLED: "#9e9d24",
}
_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
code, pre, td.mono { font-family: ui-monospace, monospace; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
pre.stderr { background: #fff4e5; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .2em .7em; border-bottom: 1px solid #ddd; }
.status { font-weight: bold; }
.note { color: #a15c00; }
.charts { display: flex; flex-wrap: wrap; gap: 3em; }
""" + "".join(f".s-{s.value} {{ color: {c}; }}\n" for s, c in _COLORS.items())
_BINS = 10


def _e(text: str) -> str:
    """Host- or inventory-provided text, made visible and HTML-escaped."""
    return html.escape(make_visible(text), quote=True)


def _e1(text: str) -> str:
    return html.escape(make_visible_line(text), quote=True)


def _status_chart(report: RunReport) -> str:
    counts = all_counts(report)
    shown = [s for s in (Status.OK, *STATUS_ORDER[:-1]) if counts[s.value]]
    if not shown:
        return "<p>No results.</p>"
    most = max(counts[s.value] for s in shown)
    row_h, label_w, bar_w = 24, 130, 300
    parts = [
        f'<svg width="{label_w + bar_w + 60}" height="{row_h * len(shown) + 4}" '
        'role="img" aria-label="hosts by status">'
    ]
    for i, status in enumerate(shown):
        n = counts[status.value]
        y = i * row_h + 2
        w = max(2, round(bar_w * n / most))
        parts.append(
            f'<text x="0" y="{y + 16}" font-size="13">{status.value}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{row_h - 6}" '
            f'fill="{_COLORS[status]}"><title>{status.value}: {n}</title></rect>'
            f'<text x="{label_w + w + 6}" y="{y + 16}" font-size="13">{n}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _histogram(results: Sequence[HostResult]) -> str:
    durations = [r.duration_s for r in results if r.duration_s is not None and r.duration_s >= 0]
    if not durations:
        return "<p>No timings.</p>"
    top = max(durations) or 1.0
    step = top / _BINS
    bins = [0] * _BINS
    for d in durations:
        bins[min(int(d / step), _BINS - 1)] += 1
    most = max(bins)
    bar_w, height, top_margin = 32, 140, 16  # the margin holds the tallest bar's count
    parts = [
        f'<svg width="{bar_w * _BINS + 10}" height="{top_margin + height + 40}" '
        'role="img" aria-label="duration histogram">'
        f'<g transform="translate(0 {top_margin})">'
    ]
    for i, n in enumerate(bins):
        h = round(height * n / most)
        x = i * bar_w + 5
        span = f"{i * step:.3g} s to {(i + 1) * step:.3g} s"
        parts.append(
            f'<rect x="{x}" y="{height - h}" width="{bar_w - 4}" height="{h}" fill="#1565c0">'
            f"<title>{span}: {n} host(s)</title></rect>"
        )
        if n:
            parts.append(f'<text x="{x + 4}" y="{height - h - 3}" font-size="11">{n}</text>')
    parts.append(
        f'<text x="5" y="{height + 16}" font-size="12">0</text>'
        f'<text x="{bar_w * _BINS - 40}" y="{height + 16}" font-size="12">'
        f"{format_seconds(top)}</text>"
        f'<text x="5" y="{height + 34}" font-size="12">duration per host</text></g></svg>'
    )
    return "".join(parts)


def _host_table(report: RunReport) -> str:
    rows = [
        "<table><thead><tr><th>host</th><th>address</th><th>status</th><th>exit</th>"
        "<th>duration</th><th>worker</th><th>error</th><th>first line of stdout</th>"
        "</tr></thead><tbody>"
    ]
    for r in report.results:
        first = r.stdout.split("\n", 1)[0][:160]
        rows.append(
            f"<tr><td class=mono>{_e1(r.host)}</td><td class=mono>{_e1(r.address)}</td>"
            f'<td class="status s-{r.status.value}">{r.status.value}</td>'
            f"<td>{'' if r.exit_code is None else _e1(str(r.exit_code))}</td>"
            f"<td>{format_seconds(r.duration_s)}</td><td>{_e1(r.worker or '')}</td>"
            f"<td>{'' if r.ok else html.escape(failure_reason(r), quote=True)}</td>"
            f"<td class=mono>{_e1(first)}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _outputs(report: RunReport) -> str:
    by_host = {r.host: r for r in report.results}
    parts = []
    for group in report.gathered():
        members = [by_host[h] for h in group.hosts]
        header = f"{fold_hosts(group.hosts)} ({len(group.hosts)})"
        if group.exit_code not in (0, None):
            header += f" exit {group.exit_code}"
        if any(r.status is Status.TIMEOUT for r in members):
            header += " timed out"
        parts.append(f"<h3><code>{html.escape(header, quote=True)}</code></h3>")
        if group.stdout or not group.stderr:
            parts.append(f"<pre>{_e(group.stdout) or '(no output)'}</pre>")
        if group.stderr:
            parts.append(f'<p>stderr:</p><pre class="stderr">{_e(group.stderr)}</pre>')
        parts.extend(
            f'<p class="note">{html.escape(note, quote=True)}</p>'
            for note in truncation_notes(members)
        )
    return "\n".join(parts) or "<p>No host ran the command.</p>"


def render_html(report: RunReport) -> str:
    """A self-contained HTML page: summary, status chart, durations, hosts, outputs."""
    run = report.run
    title = f"fleet: {_e1(run.command)} ({_e1(run.run_id)})"
    counts = all_counts(report)
    count_items = "".join(
        f'<li><span class="status s-{s.value}">{s.value}</span>: {counts[s.value]}</li>'
        for s in (Status.OK, *STATUS_ORDER[:-1])
        if counts[s.value]
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{title}</h1>
<p>Command: <code>{_e1(run.command)}</code><br>
Pattern: <code>{_e1(run.pattern)}</code><br>
State: {_e1(run.state)}; started {_e1(run.created_at)}; finished {_e1(run.finished_at or "-")}
</p>
<p><strong>{html.escape(render_summary_line(report), quote=True)}</strong></p>
<ul>{count_items}</ul>
<div class="charts">
<section><h2>Hosts by status</h2>{_status_chart(report)}</section>
<section><h2>Durations</h2>{_histogram(report.results)}</section>
</div>
<h2>Hosts</h2>
{_host_table(report)}
<h2>Output</h2>
{_outputs(report)}
</body>
</html>
"""
