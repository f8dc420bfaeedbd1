"""The JSON contract: what `--json` prints, for scripts. The one place it is written down.

JSON contract (``fleet run --json``, ``fleet report RUN_ID --json``)
--------------------------------------------------------------------
One JSON document, ASCII-safe (every non-ASCII character is written as a ``\\uXXXX``
escape, so it reads the same whatever the terminal's or the reader's encoding), ending
with a newline::

    {
      "run_id": "r-20240101-abcd",        # the run's id
      "command": "uptime",                # the command as given
      "pattern": "web:&prod",             # the host pattern as given
      "state": "finished",                # running | finished | cancelled
      "started_at": "2024-01-01T10:00:00.000+00:00",   # ISO 8601, UTC
      "finished_at": "2024-01-01T10:00:03.200+00:00",  # null while running
      "counts": {"ok": 10, "failed": 1, ...},   # by status; every status present, 0 if none
      "hosts_total": 12,                  # hosts selected for the run
      "batches": 3,                       # --batch: how many batches; null if not batched
      "max_fail": 2,                      # --max-fail as a host count; null if none
      "fanout": 10,                       # --fanout; null if none
      "results": [                        # one object per host with a result, in the
        {                                 # run's host order (fewer than hosts_total
          "host": "web01",                # only while the run is still going)
          "address": "10.0.0.1",
          "status": "ok",                 # ok failed timeout unreachable auth_failed
                                          # hostkey_rejected error cancelled lost
                                          # skipped
          "exit_code": 0,                 # null when the command did not run to an end
          "exit_signal": null,            # "KILL", "TERM", ...: the signal that ended
                                          # the command (then exit_code is null), over
                                          # SSH (sshd's exit-signal) and locally alike
          "stdout": "...", "stderr": "...",          # as kept (capped), UTF-8 decoded
                                          # (so "café" is written "caf\\u00e9")
          "stdout_truncated": false, "stderr_truncated": false,
          "stdout_bytes": 42, "stderr_bytes": 0,     # bytes the host sent, also past the cap
          "stdout_kept_bytes": 42, "stderr_kept_bytes": 0,  # bytes kept (at most the cap),
                                          # before decoding; null in records older than it
          "duration_s": 0.21,             # null when it never ran
          "started_at": "...", "finished_at": "...",
          "error": null,                  # why it is not ok, in an operator's words
          "worker": "w1@node",            # Celery node that ran it
          "connection_reused": true,      # a pooled SSH connection was used
          "transfer": {                   # fleet script/copy/fetch: the file that went
            "path": "/etc/app.conf",      # across (null for a command): the remote path
            "bytes": 5242880,             # (copy: where it landed), its size and sha256
            "sha256": "9f86d08..."        # (copy: as checked on the host)
          },
          "batch": 1                      # 1-based batch number; null if not batched
        }
      ]
    }

Text that was not valid UTF-8 on the host arrives replacement-decoded; any lone
surrogate left is written as U+FFFD (``\\ufffd``), so every escape decodes to valid
Unicode in every parser. Non-finite numbers are written as null.

``fleet runs --json``: a JSON list, newest first, one object per run with ``run_id``,
``command``, ``pattern``, ``state``, ``started_at``, ``finished_at``, ``user`` (who
submitted it: ``user@host``, or ``beat@host``), ``schedule`` (the inventory schedule
that fired it, or null), ``hosts_total`` and ``counts`` (every status); with ``--host H``,
also ``host_status`` (H's status in that run, ``pending`` while it has none).

``fleet hosts --json`` and ``fleet schedules --json`` are written the same way
(`dumps_json`: ASCII-safe, lone surrogates as U+FFFD, non-finite numbers as null).

Fields are only ever added, never renamed or removed: scripts may rely on these.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fleet.report.common import all_counts
from fleet.results import RunRecord, RunReport, Status

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
    "exit_signal",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "stdout_bytes",
    "stderr_bytes",
    "stdout_kept_bytes",
    "stderr_kept_bytes",
    "duration_s",
    "started_at",
    "finished_at",
    "error",
    "worker",
    "connection_reused",
    "transfer",
]


def report_json_dict(report: RunReport) -> dict[str, Any]:
    """The JSON contract (see the module docstring) as a plain dict."""
    run = report.run
    order = {name: i for i, name in enumerate(run.hosts)}
    results = sorted(report.results, key=lambda r: order.get(r.host, len(order)))
    batch = {name: i for i, names in enumerate(run.batches, start=1) for name in names}
    data: dict[str, Any] = {
        "run_id": run.run_id,
        "command": run.command,
        "pattern": run.pattern,
        "state": run.state,
        "started_at": run.created_at,
        "finished_at": run.finished_at,
        "counts": all_counts(report),
        "hosts_total": len(run.hosts),
        "batches": len(run.batches) or None,
        "max_fail": run.max_fail,
        "fanout": run.fanout,
        "results": [
            {key: row[key] for key in _RESULT_KEYS} | {"batch": batch.get(row["host"])}
            for row in (r.to_dict() for r in results)
        ],
    }
    cleaned: dict[str, Any] = _clean(data)
    return cleaned


def _dumps(data: Any) -> str:
    # ASCII-safe: a report must print on any terminal encoding and parse in any decoder.
    return json.dumps(data, ensure_ascii=True, indent=2, allow_nan=False, default=str) + "\n"


def dumps_json(value: Any) -> str:
    """Any JSON document fleet prints (`fleet hosts --json`, `fleet schedules --json`):
    cleaned as the contract is, ASCII-safe, ending with a newline; a value JSON has no
    type for is written as its ``str``."""
    return _dumps(_clean(value))


def render_json(report: RunReport) -> str:
    """One JSON document (the contract in the module docstring), ending with a newline."""
    return _dumps(report_json_dict(report))


def runs_json(
    runs: Sequence[RunRecord],
    counts: Mapping[str, Mapping[str, int]] | None = None,
    host_status: Mapping[str, str] | None = None,
) -> str:
    """`fleet runs --json`: a JSON list, newest first as given, one object per run; with
    `host_status` (``fleet runs --host H``), each object also has ``host_status``."""
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
            "schedule": run.schedule,
            "hosts_total": len(run.hosts),
            "counts": {s.value: int(counts.get(run.run_id, {}).get(s.value, 0)) for s in Status},
        }
        | ({"host_status": host_status.get(run.run_id)} if host_status is not None else {})
        for run in runs
    ]
    return _dumps(_clean(doc))
