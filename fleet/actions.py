"""What a run does on each host besides a shell command: `Action` (script, copy, fetch).

An action travels in the task message as a plain dict (`Action.to_message`) and is
recorded in the run record; a worker rebuilds it with `Action.from_message`, which treats
the dict as untrusted input (anyone who can write to the broker can write one) and
raises `UsageError` for anything malformed. File content never travels in a message:
`Staged` names a file staged in the run store (`fleet.staging`) by name, size and sha256.

Also here, because both the submitter and the tests need them without any transport:
`interpreter_of` (a script's ``#!`` line) and `safe_component` (a host or file name made
into one harmless path component, for ``fleet fetch``'s LOCALDIR/HOST/NAME).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet.errors import UsageError

SCRIPT = "script"
COPY = "copy"
FETCH = "fetch"
KINDS = (SCRIPT, COPY, FETCH)

#: Mode of a copied file new on the host without ``fleet copy --mode`` (an existing
#: file keeps its own mode and owner, as ``cp`` onto an existing file does).
DEFAULT_MODE = 0o644
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_BLOB_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
#: Bounds on what a message may ask: paths and arguments of sane size.
MAX_PATH = 4096
MAX_ARGS = 1024
MAX_ARGS_BYTES = 128 * 1024
_SAFE_CHARS = re.compile(r"[A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Staged:
    """A file staged in the run store: its name there, size (bytes) and sha256 (hex)."""

    name: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_message(cls, data: Any) -> Staged:
        if not isinstance(data, Mapping):
            raise UsageError("action.file: expected an object")
        name, size, digest = data.get("name"), data.get("size"), data.get("sha256")
        if not isinstance(name, str) or not _BLOB_NAME.match(name):
            raise UsageError(f"action.file.name: invalid staged name {name!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise UsageError(f"action.file.size: expected a byte count, got {size!r}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise UsageError("action.file.sha256: expected 64 lowercase hex digits")
        return cls(name, size, digest)


@dataclass(frozen=True, slots=True)
class Action:
    """One host's file work. `kind` is script, copy or fetch; the other fields as it needs:

    - script: `name` (the file's base name), `interpreter` (argv from ``#!``), `args`,
      `file` (the staged script);
    - copy: `dest` (remote path, or an existing directory), `name`, `mode`, `file`;
    - fetch: `remote` (the remote file's path).
    Whether sudo wraps the work comes from the run's `ExecOptions` (``--sudo``).
    """

    kind: str
    file: Staged | None = None
    name: str = ""
    interpreter: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    dest: str = ""
    mode: int | None = None  # None: an existing DEST's mode (and owner), else DEFAULT_MODE
    remote: str = ""

    def __post_init__(self) -> None:
        check_action(self)

    def to_message(self) -> dict[str, Any]:
        """The action as a task message and the run record carry it (JSON-safe)."""
        data: dict[str, Any] = {"kind": self.kind}
        if self.file is not None:
            data["file"] = self.file.to_dict()
        if self.kind == SCRIPT:
            data.update(name=self.name, interpreter=list(self.interpreter), args=list(self.args))
        elif self.kind == COPY:
            data.update(dest=self.dest, name=self.name, mode=self.mode)
        else:
            data["remote"] = self.remote
        return data

    @classmethod
    def from_message(cls, data: Any) -> Action:
        """Rebuild an action from an untrusted dict. Raises `UsageError` naming the field."""
        if not isinstance(data, Mapping):
            raise UsageError("action: expected an object")
        kind = data.get("kind")
        if kind not in KINDS:
            raise UsageError(f"action.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        file = Staged.from_message(data["file"]) if kind != FETCH else None
        if kind == SCRIPT:
            return cls(
                SCRIPT,
                file,
                name=_text(data, "name"),
                interpreter=_strings(data, "interpreter"),
                args=_strings(data, "args"),
            )
        if kind == COPY:
            mode = data.get("mode")
            if mode is not None and (not isinstance(mode, int) or isinstance(mode, bool)):
                raise UsageError(f"action.mode: expected an integer or null, got {mode!r}")
            return cls(COPY, file, name=_text(data, "name"), dest=_text(data, "dest"), mode=mode)
        return cls(FETCH, remote=_text(data, "remote"))

    def describe(self) -> str:
        """The run's command line as reports show it (``script deploy.sh -- v1``)."""
        if self.kind == SCRIPT:
            tail = f" -- {shlex.join(self.args)}" if self.args else ""
            return f"script {self.name}{tail}"
        if self.kind == COPY:
            mode = "kept" if self.mode is None else f"{self.mode:04o}"
            return f"copy {self.name} {self.dest} (mode {mode})"
        return f"fetch {self.remote}"


def check_action(action: Action) -> None:
    """Raise `UsageError` for an action no host should be asked to do."""
    if action.kind not in KINDS:
        raise UsageError(f"action.kind: unknown kind {action.kind!r}")
    if (action.file is None) != (action.kind == FETCH):
        needs = "needs a" if action.file is None else "takes no"
        raise UsageError(f"action.file: a {action.kind} {needs} staged file")
    if action.kind in (SCRIPT, COPY):
        _check_text("name", action.name)
        if "/" in action.name or action.name in (".", ".."):
            raise UsageError(f"action.name: expected a file name, got {action.name!r}")
    if action.kind == SCRIPT:
        if not 1 <= len(action.interpreter) <= 2:
            raise UsageError("action.interpreter: expected a program and at most one argument")
        for part in action.interpreter:
            _check_text("interpreter", part)
        if len(action.args) > MAX_ARGS or sum(len(a) for a in action.args) > MAX_ARGS_BYTES:
            raise UsageError("action.args: too many or too long")
        for arg in action.args:
            if "\0" in arg:
                raise UsageError("action.args: an argument holds a NUL character")
    if action.kind == COPY:
        _check_text("dest", action.dest)
        if action.mode is not None and not 0 <= action.mode <= 0o7777:
            raise UsageError(f"action.mode: expected 0000-7777 (octal), got {action.mode:o}")
    if action.kind == FETCH:
        _check_text("remote", action.remote)
        if not fetched_name(action.remote):
            raise UsageError(f"action.remote: {action.remote!r} names no file")


def _check_text(field: str, value: str) -> None:
    if not value or "\0" in value or "\n" in value or len(value) > MAX_PATH:
        raise UsageError(f"action.{field}: expected a non-empty line, got {value[:80]!r}")


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise UsageError(f"action.{key}: expected a string, got {type(value).__name__}")
    return value


def _strings(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"action.{key}: expected a list of strings")
    return tuple(value)


def interpreter_of(head: bytes) -> tuple[str, ...]:
    """The argv that runs a script whose first bytes are `head`: its ``#!`` line (the
    program and at most one argument, as the Linux kernel reads it), else ``/bin/sh``.
    Run explicitly, so a script in a ``noexec`` temporary directory still runs."""
    if not head.startswith(b"#!"):
        return ("/bin/sh",)
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    program, _, arg = line.partition(" ")
    if not program:
        return ("/bin/sh",)
    arg = arg.strip()
    return (program, arg) if arg else (program,)


def fetched_name(remote: str) -> str:
    """The file name `fleet fetch` saves `remote` under (its last component), or ""."""
    name = remote.rstrip("/").rsplit("/", 1)[-1]
    return "" if name in ("", ".", "..") else name


def safe_component(name: str) -> str:
    """`name` as one path component that cannot climb or hide: every character outside
    ``[A-Za-z0-9._-]`` (``/``, NUL, ``%`` ...) and a leading dot become ``%XX`` of their
    UTF-8 bytes. Reversible, so two names never collide; ordinary host names are unchanged."""
    out: list[str] = []
    for index, char in enumerate(name):
        if _SAFE_CHARS.match(char) and not (index == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))
    return "".join(out) or "%"
