"""paramiko's log records, made safe to read and kept out of the way.

paramiko logs what a host sent (its banner, its version string) raw, and writes every
line of a traceback as an ERROR record (e.g. for "Error reading SSH protocol banner");
with no handler of its own, Python's last-resort handler prints them on the CLI's
stderr and in a worker's log (PITFALLS). fleet already reports each host's failure as
its status, so paramiko's records are passed to fleet's ``fleet.ssh.paramiko`` logger
at DEBUG: one line each, control characters made visible. A worker started with
``-l DEBUG`` shows them; at INFO nothing of paramiko's reaches the log.
"""

from __future__ import annotations

import logging

from fleet.textsafe import make_visible_line

MAX_LINE = 500
log = logging.getLogger("fleet.ssh.paramiko")


class _Bridge(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed record must not break a connect
            message = str(record.msg)
        log.debug("%s: %s", record.levelname.lower(), make_visible_line(message)[:MAX_LINE])


def route_paramiko_logs() -> None:
    """Send the ``paramiko`` logger's records through `_Bridge` only (idempotent)."""
    paramiko_log = logging.getLogger("paramiko")
    if not any(isinstance(h, _Bridge) for h in paramiko_log.handlers):
        paramiko_log.addHandler(_Bridge())
    paramiko_log.propagate = False
