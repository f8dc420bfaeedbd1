"""Scripts, copies and fetches on one host, over any transport (`run_action`).

Each is a few steps over the dispatcher's primitives (`fleet.execute`: a command, an
upload, a download), so SSH and `connection: local` behave the same:

- script: ``mktemp -d`` (0700, unpredictable name) as the login user; upload the script
  into it; run it with its ``#!`` interpreter and the arguments, each shell-quoted, with
  the run's sudo and environment; remove the directory afterwards, also after a timeout
  or a failure (with sudo when the script ran with sudo: it may have left root's files).
- copy: upload into a private ``mktemp -d``; then one shell step (with sudo when asked)
  copies it to a temporary name beside DEST (DEST an existing directory: inside it, as
  ``cp`` does), checks the sha256 of what landed, sets the mode, and renames it over
  DEST: a reader sees the old file or the new one, never part of one.
- fetch: check the remote file (regular, readable, within the size limit), download it
  to this worker, and stage it in the run store for the submitter (`fleet.staging`).

Never raises for the host's trouble: every outcome is a `HostResult` with a `transfer`
object (path, bytes, sha256) when a file went across.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fleet.actions import COPY, DEFAULT_MODE, FETCH, SCRIPT, Action
from fleet.command import ExecOptions
from fleet.errors import FleetError
from fleet.execute import execute, get_file, put_file
from fleet.inventory.hosts import Host
from fleet.results import HostResult, Status
from fleet.staging import GRACE_S, StagedCache, StagingError, fetched_name, stage_file
from fleet.store.protocol import RunStore

#: Wall time of a helper step (mktemp, cleanup, size check), seconds, at most.
HELPER_S = 15.0
_MKTEMP = 'umask 077 && mktemp -d "${TMPDIR:-/tmp}/fleet.XXXXXXXXXX"'
_SHA256 = "if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi"

_cache = StagedCache()


def run_action(
    store: RunStore, run_id: str, host: Host, action: Action, options: ExecOptions, limit: int
) -> HostResult:
    """Do `action` on `host`; `limit` bounds a fetched file (bytes, the worker's own)."""
    if action.kind == FETCH:
        return fetch(store, run_id, host, action, options, limit)
    assert action.file is not None  # checked by Action
    with contextlib.ExitStack() as held:  # the cached file stays until the upload is done
        try:
            source = held.enter_context(_cache.use(store, run_id, action.file))
        except FleetError as exc:
            return _error(host, f"the staged file is unavailable on this worker: {exc}")
        return (run_script if action.kind == SCRIPT else copy)(host, action, source, options)


def _helper(options: ExecOptions, *, become: bool | None = False) -> ExecOptions:
    return replace(
        options, become=become, env={}, command_timeout=min(options.command_timeout, HELPER_S)
    )


def _error(host: Host, message: str, status: Status = Status.ERROR) -> HostResult:
    return HostResult.not_run(host.name, status, message, host.address)


def _last_line(result: HostResult) -> str:
    lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else (result.error or "no message")


def _step_failed(result: HostResult, what: str) -> HostResult:
    """A helper step's non-ok result as the host's: its transport status kept, a command
    that ran and failed (or an SFTP error) is `failed` with the host's reason."""
    status = result.status
    if status in (Status.FAILED, Status.ERROR) and result.started_at is not None:
        status = Status.FAILED
    reason = _last_line(result) if result.status is Status.FAILED else result.error
    return replace(result, status=status, error=f"{what}: {reason}")


def _private_dir(host: Host, options: ExecOptions) -> tuple[str | None, HostResult]:
    made = execute(host, _MKTEMP, _helper(options))
    directory = made.stdout.strip()
    if not made.ok or not directory.startswith("/") or "\n" in directory:
        if made.ok:
            made = replace(made, status=Status.FAILED, stderr=f"mktemp said {directory!r}")
        return None, _step_failed(made, "cannot create a private temporary directory")
    return directory, made


def _remove(host: Host, directory: str, options: ExecOptions, become: bool | None) -> str:
    """Remove `directory`; "" when gone, else why not (added to the host's error)."""
    done = execute(host, f"rm -rf -- {shlex.quote(directory)}", _helper(options, become=become))
    return "" if done.ok else f"; {directory} not removed: {_last_line(done)}"


def _with_cleanup_note(result: HostResult, note: str) -> HostResult:
    if not note:
        return result
    return replace(result, error=(result.error or "done") + note)


def run_script(host: Host, action: Action, source: Path, options: ExecOptions) -> HostResult:
    directory, failure = _private_dir(host, options)
    if directory is None:
        return failure
    path = posixpath.join(directory, action.name)
    become = options.become if options.become is not None else host.become
    try:
        upload = put_file(host, source, path, 0o700, options)
        if not upload.ok:
            result = _step_failed(upload, "cannot upload the script")
        else:
            line = shlex.join([*action.interpreter, path, *action.args])
            result = execute(host, line, options)
    finally:
        note = _remove(host, directory, options, become)
    assert action.file is not None
    transfer = {"path": path, "bytes": action.file.size, "sha256": action.file.sha256}
    return _with_cleanup_note(replace(result, transfer=transfer), note)


def place_command(source: str, dest: str, name: str, mode: int | None, sha256: str) -> str:
    """The shell step of a copy: `source` (on the host) to DEST, verified, atomically.
    Prints the final path on success; says why on stderr and exits 1 otherwise.

    `mode` None: a DEST that exists keeps its mode and owner (``cp -p`` of it onto the
    temporary file first, POSIX), a new one gets `DEFAULT_MODE`.
    """
    q = shlex.quote
    if mode is None:
        # cp -p keeps the owner and group (as root); the mode is read with stat (GNU,
        # then BSD) and set after the content is written, which needs owner write.
        keep = (
            'if [ -f "$t" ]; then m=$(stat -c %a -- "$t" 2>/dev/null || stat -f %Lp -- "$t") '
            '&& cp -p -- "$t" "$tmp" && chmod u+w "$tmp" || exit 1; '
            f"else m={DEFAULT_MODE:04o}; fi; "
        )
    else:
        keep = f"m={mode:04o}; "
    return (
        f"src={q(source)}; t={q(dest)}; "
        f'if [ -d "$t" ]; then t="${{t%/}}"/{q(name)}; fi; '
        'tmp=$(mktemp "$(dirname -- "$t")/.fleet-XXXXXXXXXX") || exit 1; '
        "trap 'rm -f -- \"$tmp\"' EXIT; " + keep + 'cat -- "$src" > "$tmp" || exit 1; '
        f'sum=$( ({_SHA256}) < "$tmp" | cut -c1-64); '
        f'if [ "$sum" != {q(sha256)} ]; then '
        'echo "sha256 of what landed ($sum) differs from the source" >&2; exit 1; fi; '
        'chmod "$m" "$tmp" || exit 1; '
        'mv -f -- "$tmp" "$t" || exit 1; '
        'printf "%s\\n" "$t"'
    )


def copy(host: Host, action: Action, source: Path, options: ExecOptions) -> HostResult:
    assert action.kind == COPY and action.file is not None
    directory, failure = _private_dir(host, options)
    if directory is None:
        return failure
    staged = posixpath.join(directory, "data")
    try:
        upload = put_file(host, source, staged, 0o600, replace(options, become=False))
        if not upload.ok:
            return _step_failed(upload, f"cannot upload to {directory}")
        place = execute(
            host,
            place_command(staged, action.dest, action.name, action.mode, action.file.sha256),
            replace(options, env={}),
        )
    finally:
        note = _remove(host, directory, options, False)
    if not place.ok:
        return _with_cleanup_note(_step_failed(place, f"copy to {action.dest} failed"), note)
    target = place.stdout.strip().splitlines()[-1] if place.stdout.strip() else action.dest
    size, digest = action.file.size, action.file.sha256
    summary = f"copied {size} bytes to {target} (sha256 {digest[:16]}...)\n"
    result = replace(
        place,
        stdout=summary,
        stdout_bytes=len(summary.encode()),
        stdout_kept_bytes=len(summary.encode()),
        transfer={"path": target, "bytes": size, "sha256": digest},
    )
    return _with_cleanup_note(result, note)


def size_command(remote: str) -> str:
    """Prints the size of `remote` (bytes) if it is a readable regular file, else says why."""
    f = shlex.quote(remote)
    return (
        f"f={f}; "
        'if [ ! -e "$f" ]; then echo "$f: No such file or directory" >&2; exit 1; fi; '
        'if [ ! -f "$f" ]; then echo "$f: not a regular file" >&2; exit 1; fi; '
        'if [ ! -r "$f" ]; then echo "$f: Permission denied" >&2; exit 1; fi; '
        'wc -c < "$f"'
    )


def fetch(
    store: RunStore, run_id: str, host: Host, action: Action, options: ExecOptions, limit: int
) -> HostResult:
    checked = execute(host, size_command(action.remote), _helper(options))
    if not checked.ok:
        return _step_failed(checked, f"cannot fetch {action.remote}")
    try:
        size = int(checked.stdout.split()[0])
    except (ValueError, IndexError):
        return _error(host, f"cannot fetch {action.remote}: unexpected size {checked.stdout!r}")
    if size > limit:
        return replace(
            checked,
            status=Status.FAILED,
            stdout="",
            error=f"{action.remote} is {size} bytes, above the transfer limit of {limit} "
            "bytes (FLEET_TRANSFER_LIMIT)",
        )
    fd, name = tempfile.mkstemp(prefix="fleet-fetch-")
    os.close(fd)
    local = Path(name)
    try:
        got = get_file(host, action.remote, local, replace(options, become=False))
        if not got.ok:
            return _step_failed(got, f"cannot fetch {action.remote}")
        if local.stat().st_size > limit:
            return replace(got, status=Status.FAILED, error=f"{action.remote} grew past the limit")
        try:
            staged = stage_file(store, run_id, fetched_name(host.name), local, _ttl(store, run_id))
        except (FleetError, OSError) as exc:
            return replace(got, status=Status.ERROR, error=f"cannot stage the fetched file: {exc}")
    finally:
        with contextlib.suppress(OSError):
            local.unlink()
    return replace(
        got,
        stdout=f"fetched {staged.size} bytes (sha256 {staged.sha256[:16]}...)\n",
        transfer={"path": action.remote, "bytes": staged.size, "sha256": staged.sha256},
    )


def _ttl(store: RunStore, run_id: str) -> int:
    try:
        deadline = store.get_run(run_id).deadline
    except FleetError:
        deadline = time.time()
    return max(60, int(deadline - time.time()) + GRACE_S)


__all__ = ["StagingError", "copy", "fetch", "place_command", "run_action", "run_script"]
