"""``fleet audit [--since WHEN] [--limit N] [--json]``: who submitted or cancelled which run.

Newest first, from the audit log (`fleet.audit`: a Redis Stream, or the embedded
history's table), at most ``--limit`` entries (default 100). ``--since`` takes a
duration before now (``30m``, ``12h``, ``1d``, ``1h30m``) or an ISO 8601 time
(``2025-01-31T12:00``, UTC unless it carries an offset); anything else is one line on
stderr and exit 2.

``--json`` prints one JSON array, newest first, one object per entry; fields are only
ever added::

    [{"when": "2025-01-31T12:00:00.123+00:00",   # ISO 8601, UTC
      "action": "submit",                        # "submit" | "cancel"
      "who": "ops@box",                          # OS account @ machine (not $USER)
      "signer": null,                            # signing identity, or null
      "run_id": "20250131-120000-3fa9c2",
      "command": "uptime", "pattern": "web",
      "host_count": 12,
      "schedule": null,                          # the schedule of a Celery beat firing
      "options": {"command_timeout": 300.0, "env": {"TOKEN": "***"}, ...}}]

An entry read back malformed (tampered) is skipped with a warning on stderr naming it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from fleet.audit import AuditEntry, parse_since, run_user
from fleet.cli_common import settings_from
from fleet.errors import EXIT_OK
from fleet.textsafe import make_visible_line

COMMAND_WIDTH = 60


def cmd_audit(args: argparse.Namespace) -> int:
    since = parse_since(args.since, time.time()) if args.since else None
    from fleet.session import RunSession

    with RunSession(settings_from(args)) as session:
        entries = session.store.audit_entries(since=since, limit=args.limit)
    if args.json:
        from fleet.report.contract import dumps_json

        sys.stdout.write(dumps_json([e.to_dict() for e in entries]))
    else:
        sys.stdout.write(render_audit(entries))
    return EXIT_OK


def render_audit(entries: Sequence[AuditEntry]) -> str:
    """The ``fleet audit`` table: time (UTC), who (the signer first when there is one),
    action, run id, host count, command; every field made visible (`fleet.textsafe`)."""
    if not entries:
        return "no audit entries\n"
    rows = [("TIME (UTC)", "WHO", "ACTION", "RUN ID", "HOSTS", "COMMAND")]
    for entry in entries:
        by = run_user(entry.who, entry.signer)
        if entry.schedule:
            by += f" schedule {entry.schedule}"
        command = make_visible_line(entry.command)
        if len(command) > COMMAND_WIDTH:
            command = command[: COMMAND_WIDTH - 1] + "…"
        rows.append(
            (
                make_visible_line(entry.when.replace("T", " ")[:19]),
                make_visible_line(by),
                make_visible_line(entry.action),
                make_visible_line(entry.run_id),
                str(entry.host_count),
                command,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"
