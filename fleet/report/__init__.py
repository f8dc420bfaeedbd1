"""Renderings of a `RunReport`: text for people, JSON for scripts, HTML for sharing.

Rendering is pure: every function returns a string (or an int), the CLI prints it.
All host-provided text (output, error messages, host names) is passed through
`fleet.textsafe` first, so a host cannot repaint the operator's terminal.

- `fleet.report.contract`: the JSON contract (`render_json`, `runs_json`), documented there;
- `fleet.report.text`: the report, summary line and `fleet runs` table for people;
- `fleet.report.html`: one self-contained HTML page;
- `fleet.report.common`: what they share (`exit_code`, durations, folded names);
- `fleet.report.files`: `write_atomically`.

Each name below is imported from its module when it is first used: ``fleet run --json``
loads no text or HTML renderer, ``fleet run`` no JSON or HTML one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet.report.common import exit_code
    from fleet.report.contract import render_json, report_json_dict, runs_json
    from fleet.report.files import write_atomically
    from fleet.report.html import render_html
    from fleet.report.text import render_runs, render_schedules, render_summary_line, render_text

__all__ = [
    "exit_code",
    "render_html",
    "render_json",
    "render_runs",
    "render_schedules",
    "render_summary_line",
    "render_text",
    "report_json_dict",
    "runs_json",
    "write_atomically",
]

_MODULE_OF = {
    "exit_code": "common",
    "render_html": "html",
    "render_json": "contract",
    "render_runs": "text",
    "render_schedules": "text",
    "render_summary_line": "text",
    "render_text": "text",
    "report_json_dict": "contract",
    "runs_json": "contract",
    "write_atomically": "files",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
