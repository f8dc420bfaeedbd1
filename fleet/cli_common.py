"""What the CLI's commands share: settings from arguments, host selection, submitting and
following a run, and printing its report with the exit code scripts rely on.

Only the CLI modules import this; it prints (stderr for messages, stdout for reports).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fleet.errors import EXIT_INTERRUPTED, UsageError
from fleet.inventory.hosts import DEFAULT_QUEUE
from fleet.settings import Settings
from fleet.stdin_env import INLINE_ENV, payload


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    return Settings.load(inventory=getattr(args, "inventory", None), **overrides)


def select(pattern: str | None, settings: Settings) -> tuple[Any, ...]:
    from fleet.inventory.loader import select_hosts
    from fleet.settings import DEFAULTS

    if not pattern:
        raise UsageError("no pattern given: name a group, e.g. --group web (or 'all')")
    return select_hosts(
        settings.inventory,
        pattern,
        max_bytes=settings.inventory_max_bytes,
        implicit_file=settings.inventory == DEFAULTS.inventory,
    )


class NoWorkerWatch:
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


def check_writable(path: Path) -> None:
    """Refuse an unwritable report path before anything runs, not after."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"--html {path}: is a directory")
    if not parent.is_dir():
        raise UsageError(f"--html {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"--html {path}: not writable")


def detach(session: Any, run_id: str, *, runs_here: bool = True) -> int:
    """Ctrl-C while following `run_id`. `runs_here`: this command's own in-process
    worker runs it (embedded `fleet run`), so it cannot go on without the command and is
    cancelled; otherwise (a broker's workers, or `fleet report --follow` of another
    command's run) only the following stops."""
    if session.is_embedded and runs_here:
        session.cancel(run_id)
        print(
            f"fleet: interrupted: run {run_id} cancelled: no further host starts; waiting "
            "for the hosts already running to finish (Ctrl-C again to quit now, leaving "
            f"their commands running: they end `lost`); see what ran with: "
            f"fleet report {run_id}",
            file=sys.stderr,
        )
    else:
        print(
            f"fleet: detached from run {run_id}; it goes on. Follow it with: "
            f"fleet report --follow {run_id}   (stop it with: fleet cancel {run_id})",
            file=sys.stderr,
        )
    return EXIT_INTERRUPTED


_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_env(items: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _SHELL_NAME.fullmatch(name):
            # The value is not shown: it may be what the user meant to keep out of sight.
            raise UsageError(
                f"--env {name[:40]!r}...: expected NAME=VALUE with NAME a shell identifier"
                if sep
                else "--env: expected NAME=VALUE with NAME a shell identifier"
            )
        if name in INLINE_ENV:
            raise UsageError(f"--env {name}: fleet sets {name} for each host; use another name")
        env[name] = value
    # The values' size and NUL bytes are known now: refuse before anything runs.
    payload(env, "-" * 32)
    return env


def parse_env_from(items: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """``--env-from NAME=WORKER_VAR`` items: both shell identifiers, NAME not also in `env`."""
    refs: dict[str, str] = {}
    for item in items:
        name, sep, variable = item.partition("=")
        if not sep or not _SHELL_NAME.fullmatch(name) or not _SHELL_NAME.fullmatch(variable):
            raise UsageError(
                f"--env-from {item!r}: expected NAME=WORKER_VAR, both shell identifiers "
                "(WORKER_VAR names a variable of the worker's environment)"
            )
        if name in env:
            raise UsageError(f"--env-from {item!r}: {name} is also given with --env")
        refs[name] = variable
    return refs


def emit_report(report: Any, args: argparse.Namespace, *, header: bool = False) -> int:
    from fleet import report as render

    if args.json:
        sys.stdout.write(render.render_json(report))
    else:
        from fleet.console import wants_color

        width = terminal_width()
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


def terminal_width() -> int:
    try:
        return max(60, os.get_terminal_size().columns)
    except OSError:
        return 100


def run_request(args: argparse.Namespace, command: str) -> tuple[Settings, Any]:
    """Settings and a `RunRequest` from `add_run_options`' arguments. Raises `FleetError`."""
    from fleet.command import ExecOptions
    from fleet.lifecycle import RunRequest, chosen_timeouts, fit_timeouts
    from fleet.rollout import Rollout

    if args.sudo_user and not args.sudo:
        raise UsageError(f"--sudo-user {args.sudo_user}: needs --sudo (it says whom sudo runs as)")
    settings = settings_from(
        args,
        command_timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        deadline=args.deadline,
        accept_new_host_keys=args.accept_new_host_keys,
    )
    hosts = select(args.group, settings)
    env = parse_env(args.env)
    options = ExecOptions.from_settings(
        settings,
        become=True if args.sudo else None,
        become_user=args.sudo_user,
        env=env,
        env_from=parse_env_from(args.env_from, env),
    )
    given = {"command_timeout"} if args.timeout is not None else set()
    given |= {"connect_timeout"} if args.connect_timeout is not None else set()
    options = fit_timeouts(options, settings.deadline, chosen_timeouts(settings, given))
    if args.html:
        check_writable(args.html)
    rollout = Rollout(
        batch=args.batch, max_fail=args.max_fail, fanout=args.fanout, order=args.batch_order
    )
    request = RunRequest(command, args.group, hosts, options, settings.deadline, rollout=rollout)
    return settings, request


def submit_and_follow(
    settings: Settings,
    request: Any,
    args: argparse.Namespace,
    *,
    title: str,
    prepare: Callable[[Any, str], None] | None = None,
    finish: Callable[[Any, str, Any], None] | None = None,
) -> int:
    """Publish `request`, show its progress until every host has a status (Ctrl-C
    detaches), print the report; returns the exit code (`fleet.report.exit_code`).

    `prepare(session, run_id)` runs before anything is published (``fleet copy`` stages
    its file), `finish(session, run_id, report)` once every host has a status, before
    the report is printed (``fleet fetch`` writes the files)."""
    from fleet.console import ProgressDisplay
    from fleet.lifecycle import new_run_id
    from fleet.session import RunSession

    run_id = new_run_id()
    with RunSession(settings) as session:
        try:
            if prepare is not None:
                prepare(session, run_id)
            session.submit(request, run_id=run_id)
        except KeyboardInterrupt:
            print(
                f"fleet: interrupted while publishing run {run_id}: the run is cancelled and "
                f"no further host will start; see what ran with: fleet report {run_id}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        queues = sorted({h.queue or DEFAULT_QUEUE for h in request.hosts})
        try:
            with ProgressDisplay(
                title, len(request.hosts), enabled=None if not args.json else False
            ) as bar:
                watch = NoWorkerWatch(bar, queues, embedded=session.is_embedded)
                report = session.follow(run_id, on_progress=watch)
        except KeyboardInterrupt:
            return detach(session, run_id)
        if finish is not None:
            finish(session, run_id, report)
    return emit_report(report, args)
