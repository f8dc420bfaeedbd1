"""``fleet script``, ``fleet copy`` and ``fleet fetch``: runs whose hosts move files.

Each is a run like ``fleet run`` (one task per host, claims, deadline, history, report)
whose request carries an `Action` (`fleet.actions`). The local file is checked before
anything is published (missing, unreadable, a directory, empty script, above
``FLEET_TRANSFER_LIMIT``: one line, exit 2), then staged in the run store for the
workers (`fleet.staging`); staged data is deleted once the run is over. ``fetch``
writes what the hosts sent to LOCALDIR/HOST/NAME, each file atomically and 0600,
never outside LOCALDIR (`fleet.actions.safe_component`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from fleet.actions import (
    COPY,
    FETCH,
    SCRIPT,
    Action,
    Staged,
    interpreter_of,
    safe_component,
)
from fleet.actions import fetched_name as file_name_of
from fleet.cli_common import run_request, submit_and_follow
from fleet.errors import FleetError, UsageError
from fleet.settings import Settings


def _check_source(path: Path, limit: int, *, what: str, allow_empty: bool) -> tuple[int, str]:
    """Size and sha256 of the local file, or `UsageError` in one line."""
    from fleet.staging import sha256_file

    if not path.exists():
        raise UsageError(f"{what} {path}: no such file")
    if path.is_dir():
        hint = (
            "copy one file at a time; for a tree, copy an archive and unpack it with fleet run"
            if what == "copy"
            else "give the script file itself"
        )
        raise UsageError(f"{what} {path}: is a directory ({hint})")
    if not path.is_file():
        raise UsageError(f"{what} {path}: not a regular file")
    try:
        size, digest = sha256_file(path)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read it: {exc.strerror or exc}") from None
    if size == 0 and not allow_empty:
        raise UsageError(f"{what} {path}: the file is empty")
    if size > limit:
        raise UsageError(
            f"{what} {path}: {size} bytes, above the transfer limit of {limit} bytes "
            "(FLEET_TRANSFER_LIMIT)"
        )
    return size, digest


def _submit(
    settings: Settings,
    request: Any,
    args: argparse.Namespace,
    *,
    title: str,
    source: Path | None = None,
    finish: Any = None,
) -> int:
    from fleet.lifecycle import run_deadline_s
    from fleet.staging import GRACE_S, SOURCE, discard, stage_file

    ttl = int(run_deadline_s(request)) + GRACE_S
    action = request.action

    def prepare(session: Any, run_id: str) -> None:
        if source is None:
            return
        try:
            staged = stage_file(session.store, run_id, SOURCE, source, ttl)
        except OSError as exc:
            raise UsageError(f"{source}: cannot read it: {exc.strerror or exc}") from None
        if action.file is None or staged != action.file:
            discard(session.store, run_id)
            raise UsageError(f"{source}: the file changed while it was read; try again")

    def done(session: Any, run_id: str, report: Any) -> None:
        try:
            if finish is not None:
                finish(session, run_id, report)
        finally:
            with contextlib.suppress(FleetError):
                discard(session.store, run_id)

    return submit_and_follow(settings, request, args, title=title, prepare=prepare, finish=done)


def _settings_limit(args: argparse.Namespace) -> int:
    from fleet.cli_common import settings_from

    return settings_from(args).transfer_limit


def cmd_script(args: argparse.Namespace) -> int:
    limit = _settings_limit(args)
    size, digest = _check_source(args.path, limit, what="script", allow_empty=False)
    with args.path.open("rb") as source:
        interpreter = interpreter_of(source.read(256))
    from fleet.staging import SOURCE

    action = Action(
        SCRIPT,
        Staged(SOURCE, size, digest),
        name=args.path.name,
        interpreter=interpreter,
        args=tuple(args.script_args),
    )
    settings, request = run_request(args, action.describe())
    request = replace(request, action=action)
    return _submit(settings, request, args, title="script", source=args.path)


def cmd_copy(args: argparse.Namespace) -> int:
    limit = _settings_limit(args)
    size, digest = _check_source(args.src, limit, what="copy", allow_empty=True)
    from fleet.staging import SOURCE

    action = Action(
        COPY, Staged(SOURCE, size, digest), name=args.src.name, dest=args.dest, mode=args.mode
    )
    settings, request = run_request(args, action.describe())
    request = replace(request, action=action)
    return _submit(settings, request, args, title="copy", source=args.src)


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.sudo:
        raise UsageError("fetch reads as the login user: --sudo is not supported")
    name = file_name_of(args.remote)
    if not name:
        raise UsageError(f"fetch {args.remote!r}: names no file")
    action = Action(FETCH, remote=args.remote)
    settings, request = run_request(args, action.describe())
    localdir = _check_localdir(args.localdir)
    request = replace(request, action=action)

    def write(session: Any, run_id: str, report: Any) -> None:
        written, problems = write_fetched(session.store, run_id, report, localdir, name)
        for line in problems:
            print(f"fleet: {line}", file=sys.stderr)
        if written:
            print(f"fleet: {written} file(s) written under {localdir}/HOST/", file=sys.stderr)

    return _submit(settings, request, args, title="fetch", finish=write)


def _check_localdir(localdir: Path) -> Path:
    if localdir.exists() and not localdir.is_dir():
        raise UsageError(f"fetch: {localdir}: not a directory")
    try:
        localdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"fetch: {localdir}: cannot create it: {exc.strerror or exc}") from None
    if not os.access(localdir, os.W_OK | os.X_OK):
        raise UsageError(f"fetch: {localdir}: not writable")
    return localdir


def fetch_target(localdir: Path, host: str, name: str) -> Path:
    """LOCALDIR/HOST/NAME with both made safe (`safe_component`); `UsageError` if the
    result would resolve outside LOCALDIR anyway (a symlinked HOST directory)."""
    root = localdir.resolve()
    target = root / safe_component(host) / safe_component(name)
    parent = target.parent.resolve() if target.parent.exists() else target.parent
    if parent.parent != root:
        raise UsageError(f"fetch: {target.parent} leads outside {localdir}")
    return target


def write_fetched(
    store: Any, run_id: str, report: Any, localdir: Path, name: str
) -> tuple[int, list[str]]:
    """Write each ok host's fetched file; returns how many, and a line per problem."""
    from fleet.staging import fetched_name, read_staged

    written = 0
    problems: list[str] = []
    for result in report.results:
        if not result.ok or not result.transfer:
            continue
        made: Path | None = None
        try:
            staged = Staged(
                fetched_name(result.host),
                int(result.transfer["bytes"]),
                str(result.transfer["sha256"]),
            )
            target = fetch_target(localdir, result.host, name)
            if not target.parent.exists():
                target.parent.mkdir(mode=0o700)
                made = target.parent
            fetch_target(localdir, result.host, name)  # again, now that it exists
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".fleet-")
            try:
                with os.fdopen(fd, "wb") as sink:
                    read_staged(store, run_id, staged, sink)
                    sink.flush()
                    os.fsync(sink.fileno())
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
            written += 1
        except (FleetError, OSError, KeyError, ValueError) as exc:
            problems.append(f"{result.host}: fetched file not written: {exc}")
            if made is not None:  # an empty HOST/ would read as "fetched, and empty"
                with contextlib.suppress(OSError):
                    made.rmdir()
    return written, problems
