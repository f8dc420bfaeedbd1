"""The command line: argument parsing, messages and exit codes. The only place that prints.

Exit codes: 0 every host ok; 1 some host not ok; 2 usage or input error;
3 infrastructure error (broker or store unreachable); 130 detached by Ctrl-C;
70 an internal error (a bug: run again with --debug for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleet.cli_parser import Handler, build_parser
from fleet.cli_service import cmd_beat, cmd_schedules, cmd_worker
from fleet.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    FleetError,
    InventoryError,
    UsageError,
)
from fleet.inventory.hosts import DEFAULT_QUEUE
from fleet.settings import Settings
from fleet.textsafe import exception_line

EXIT_INTERNAL = 70


def main(argv: Sequence[str] | None = None) -> int:
    _escape_unencodable_output()
    parser = build_parser(_HANDLERS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except FleetError as exc:
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fleet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"fleet: internal error: {type(exc).__name__}: {exception_line(exc)} "
            "(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def main_exit() -> None:
    sys.exit(main())


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


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return Settings.load(inventory=getattr(args, "inventory", None), **overrides)


def _select(pattern: str | None, settings: Settings) -> tuple[Any, ...]:
    from fleet.inventory.loader import load_inventory

    if not pattern:
        raise UsageError("no pattern given: name a group, e.g. --group web (or 'all')")
    return load_inventory(settings.inventory).select(pattern)


def cmd_hosts(args: argparse.Namespace) -> int:
    settings = _settings(args)
    hosts = _select(args.group or args.pattern, settings)
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
    from fleet.command import ExecOptions
    from fleet.lifecycle import RunRequest, check_command, chosen_timeouts, fit_timeouts

    check_command(args.command)  # before the inventory is even read
    settings = _settings(
        args,
        command_timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        deadline=args.deadline,
        accept_new_host_keys=args.accept_new_host_keys,
        debug=args.debug or None,
    )
    hosts = _select(args.group, settings)
    options = ExecOptions.from_settings(
        settings,
        become=True if args.sudo else None,
        become_user=args.sudo_user,
        env=_parse_env(args.env),
    )
    given = {"command_timeout"} if args.timeout is not None else set()
    given |= {"connect_timeout"} if args.connect_timeout is not None else set()
    options = fit_timeouts(options, settings.deadline, chosen_timeouts(settings, given))
    request = RunRequest(args.command, args.group, hosts, options, settings.deadline)
    if args.html:
        _check_writable(args.html)
    from fleet.console import ProgressDisplay
    from fleet.lifecycle import new_run_id
    from fleet.session import RunSession

    run_id = new_run_id()
    with RunSession(settings) as session:
        try:
            session.submit(request, run_id=run_id)
        except KeyboardInterrupt:
            print(
                f"fleet: interrupted while publishing run {run_id}: the run is cancelled and "
                f"no further host will start; see what ran with: fleet report {run_id}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        queues = sorted({h.queue or DEFAULT_QUEUE for h in hosts})
        try:
            with ProgressDisplay(
                args.command, len(hosts), enabled=None if not args.json else False
            ) as bar:
                watch = _NoWorkerWatch(bar, queues, embedded=session.is_embedded)
                report = session.follow(run_id, on_progress=watch)
        except KeyboardInterrupt:
            return _detach(session, run_id)
    return _emit_report(report, args)


class _NoWorkerWatch:
    """Passes progress to the bar, and says so once when no host has started for a while:
    a run whose queue no worker consumes would otherwise wait silently for its deadline."""

    AFTER_S = 10.0

    def __init__(self, bar: Any, queues: Sequence[str], *, embedded: bool) -> None:
        self._bar = bar
        self._queues = queues
        self._warned = embedded

    def __call__(self, progress: Any) -> None:
        self._bar.update(progress)
        if progress.started or progress.done:
            self._warned = True  # a worker is there: nothing to say, ever
        if self._warned or progress.elapsed_s < self.AFTER_S:
            return
        self._warned = True
        self._bar.note(
            f"fleet: no host has started after {progress.elapsed_s:.0f} s: is a worker "
            f"consuming queue {', '.join(self._queues)}? (the run waits until its deadline)"
        )


def _check_writable(path: Path) -> None:
    """Refuse an unwritable report path before anything runs, not after."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"--html {path}: is a directory")
    if not parent.is_dir():
        raise UsageError(f"--html {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"--html {path}: not writable")


def _detach(session: Any, run_id: str) -> int:
    if session.is_embedded:
        session.cancel(run_id)
        print(
            f"fleet: interrupted: run {run_id} cancelled (the in-process worker stops with "
            f"this command); see what ran with: fleet report {run_id}",
            file=sys.stderr,
        )
    else:
        print(
            f"fleet: detached from run {run_id}; it goes on. Follow it with: "
            f"fleet report --follow {run_id}   (stop it with: fleet cancel {run_id})",
            file=sys.stderr,
        )
    return EXIT_INTERRUPTED


def _parse_env(items: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--env {item!r}: expected NAME=VALUE with NAME a shell identifier")
        env[name] = value
    return env


def _emit_report(report: Any, args: argparse.Namespace, *, header: bool = False) -> int:
    from fleet import report as render

    if args.json:
        sys.stdout.write(render.render_json(report))
    else:
        from fleet.console import wants_color

        width = _terminal_width()
        sys.stdout.write(
            render.render_text(
                report,
                color=wants_color(sys.stdout),
                width=width,
                verbose=args.verbose,
                header=header,
            )
        )
    sys.stdout.flush()
    if getattr(args, "html", None):
        render.write_atomically(args.html, render.render_html(report))
        print(f"fleet: HTML report written to {args.html}", file=sys.stderr)
    return int(render.exit_code(report))


def _terminal_width() -> int:
    try:
        return max(60, os.get_terminal_size().columns)
    except OSError:
        return 100


def cmd_runs(args: argparse.Namespace) -> int:
    from fleet import report as render
    from fleet.session import RunSession

    with RunSession(_settings(args)) as session:
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

    with RunSession(_settings(args)) as session:
        report = session.report(args.run_id)
        if args.follow and not report.is_complete:
            from fleet.console import ProgressDisplay

            run = report.run
            try:
                with ProgressDisplay(run.command, len(run.hosts), enabled=not args.json) as bar:
                    followed = session.follow(args.run_id, on_progress=bar.update)
            except KeyboardInterrupt:
                return _detach(session, args.run_id)
            report = followed if followed is not None else session.report(args.run_id)
    return _emit_report(report, args, header=True)


def cmd_cancel(args: argparse.Namespace) -> int:
    from fleet.session import RunSession

    with RunSession(_settings(args)) as session:
        state = session.run_state(args.run_id)
        if session.cancel(args.run_id):
            print(f"fleet: run {args.run_id} cancelled; hosts not yet started will not run")
            return EXIT_OK
    print(f"fleet: run {args.run_id} is already {state}; nothing to cancel", file=sys.stderr)
    return EXIT_OK


_HANDLERS: dict[str, Handler] = {
    "cmd_beat": cmd_beat,
    "cmd_schedules": cmd_schedules,
    "cmd_cancel": cmd_cancel,
    "cmd_hosts": cmd_hosts,
    "cmd_report": cmd_report,
    "cmd_run": cmd_run,
    "cmd_runs": cmd_runs,
    "cmd_worker": cmd_worker,
}
