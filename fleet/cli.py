"""The command line: argument parsing, messages and exit codes. The only place that prints.

Exit codes: 0 every host ok; 1 some host not ok; 2 usage or input error;
3 infrastructure error (broker or store unreachable); 130 detached by Ctrl-C;
141 stdout's reader went away (``| head``); 70 an internal error (a bug: run again
with --debug for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from collections.abc import Sequence

from fleet.cli_common import (
    detach,
    emit_report,
    run_request,
    select,
    settings_from,
    submit_and_follow,
)
from fleet.cli_parser import Handler, build_parser
from fleet.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    FleetError,
    InventoryError,
)
from fleet.textsafe import exception_line

EXIT_INTERNAL = 70


def main(argv: Sequence[str] | None = None) -> int:
    _escape_unencodable_output()
    _say_warnings()
    parser = build_parser(_HANDLERS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except FleetError as exc:
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fleet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug or os.environ.get("FLEET_DEBUG", "").lower() in ("1", "true", "yes", "on"):
            raise
        print(
            f"fleet: internal error: {type(exc).__name__}: {exception_line(exc)} "
            "(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def main_exit() -> None:
    code = main()
    if code == EXIT_INTERRUPTED:
        # Ctrl-C means now: Python's own exit would first join every thread of the
        # in-process worker's pool (concurrent.futures), waiting for the very commands
        # the operator interrupted.
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _reader_gone() -> int:
    """stdout's reader closed the pipe: stop quietly, as `cat` killed by SIGPIPE does
    (the run, if any, goes on; `fleet report RUN_ID` shows it). Later writes (Python's
    own flush at exit) go to /dev/null instead of raising again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def _say_warnings() -> None:
    """fleet's own warnings (an unreadable record skipped, a late result in embedded
    mode) as ``fleet: warning: ...`` lines on stderr, not Python's bare last-resort
    output; other libraries' log records stay out of the command's output."""
    logger = logging.getLogger("fleet")
    if any(getattr(h, "fleet_cli", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("fleet: warning: %(message)s"))
    handler.fleet_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False  # once, even if a library configures the root logger


def _escape_unencodable_output() -> None:
    """For every print: what stdout/stderr cannot encode (locale, PYTHONIOENCODING) is
    written as an escape (``\\xe9``), never raised. Hosts decide what their output holds."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            with contextlib.suppress(ValueError, OSError):  # closed, or a broken pipe
                stream.reconfigure(errors="backslashreplace")


def _print_error(exc: FleetError) -> None:
    lines = exc.render().splitlines() if isinstance(exc, InventoryError) else [str(exc)]
    for line in lines:
        print(f"fleet: {line}", file=sys.stderr)


def cmd_hosts(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    hosts = select(args.group or args.pattern, settings)
    if args.json:
        from fleet.report.contract import dumps_json

        doc = [
            {k: v for k, v in h.to_dict().items() if k not in ("env", "vars")}
            | {"vars": dict(h.vars)}
            for h in hosts
        ]
        sys.stdout.write(dumps_json(doc))
        return EXIT_OK
    from fleet.textsafe import make_visible

    rows = [("HOST", "ADDRESS", "PORT", "USER", "QUEUE", "CONNECTION")]
    for h in hosts:
        rows.append((h.name, h.address, str(h.port), h.user or "-", h.queue or "-", h.connection))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            make_visible("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        )
    print(f"{len(hosts)} host(s)", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from fleet.lifecycle import check_command

    check_command(args.command)  # before the inventory is even read
    settings, request = run_request(args, args.command)
    return submit_and_follow(settings, request, args, title=args.command)


def cmd_runs(args: argparse.Namespace) -> int:
    from fleet import report as render
    from fleet.session import RunSession

    with RunSession(settings_from(args)) as session:
        reports = session.list_reports(limit=args.limit, host=args.host)
    runs = [r.run for r in reports]
    counts = {r.run.run_id: r.counts() for r in reports}
    host_status = None
    if args.host:  # that host's own status in each run ("pending" while it has none)
        host_status = {
            r.run.run_id: next(
                (x.status.value for x in r.results if x.host == args.host), "pending"
            )
            for r in reports
        }
    if args.json:
        sys.stdout.write(render.runs_json(runs, counts, host_status))
    else:
        from fleet.console import wants_color

        color = wants_color(sys.stdout)
        sys.stdout.write(render.render_runs(runs, counts, color=color, host_status=host_status))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from fleet.session import RunSession

    with RunSession(settings_from(args)) as session:
        report = session.report(args.run_id)
        if args.follow and not report.is_complete:
            from fleet.console import ProgressDisplay

            run = report.run
            try:
                with ProgressDisplay(run.command, len(run.hosts), enabled=not args.json) as bar:
                    followed = session.follow(args.run_id, on_progress=bar.update)
            except KeyboardInterrupt:
                return detach(session, args.run_id, runs_here=False)
            report = followed if followed is not None else session.report(args.run_id)
    return emit_report(report, args, header=True)


def cmd_cancel(args: argparse.Namespace) -> int:
    from fleet.session import RunSession

    with RunSession(settings_from(args)) as session:
        state = session.run_state(args.run_id)
        if session.cancel(args.run_id):
            print(f"fleet: run {args.run_id} cancelled; hosts not yet started will not run")
            return EXIT_OK
    print(f"fleet: run {args.run_id} is already {state}; nothing to cancel", file=sys.stderr)
    return EXIT_OK


# The other subcommands' modules are imported when their subcommand runs: the parser
# needs only their names, and `fleet run` or `fleet hosts` loads none of their code.


def cmd_audit(args: argparse.Namespace) -> int:
    from fleet.cli_audit import cmd_audit as handler

    return handler(args)


def cmd_keys_init(args: argparse.Namespace) -> int:
    from fleet.cli_keys import cmd_keys_init as handler

    return handler(args)


def cmd_worker(args: argparse.Namespace) -> int:
    from fleet.cli_service import cmd_worker as handler

    return handler(args)


def cmd_beat(args: argparse.Namespace) -> int:
    from fleet.cli_service import cmd_beat as handler

    return handler(args)


def cmd_schedules(args: argparse.Namespace) -> int:
    from fleet.cli_service import cmd_schedules as handler

    return handler(args)


def cmd_script(args: argparse.Namespace) -> int:
    from fleet.cli_transfer import cmd_script as handler

    return handler(args)


def cmd_copy(args: argparse.Namespace) -> int:
    from fleet.cli_transfer import cmd_copy as handler

    return handler(args)


def cmd_fetch(args: argparse.Namespace) -> int:
    from fleet.cli_transfer import cmd_fetch as handler

    return handler(args)


_HANDLERS: dict[str, Handler] = {
    "cmd_audit": cmd_audit,
    "cmd_beat": cmd_beat,
    "cmd_schedules": cmd_schedules,
    "cmd_cancel": cmd_cancel,
    "cmd_hosts": cmd_hosts,
    "cmd_keys_init": cmd_keys_init,
    "cmd_report": cmd_report,
    "cmd_run": cmd_run,
    "cmd_runs": cmd_runs,
    "cmd_worker": cmd_worker,
    "cmd_script": cmd_script,
    "cmd_copy": cmd_copy,
    "cmd_fetch": cmd_fetch,
}
