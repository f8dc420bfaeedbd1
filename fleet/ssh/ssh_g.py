"""The effective client configuration of one host, as OpenSSH itself computes it.

``ssh -G`` (ssh(1): "print its configuration after evaluating Host and Match blocks
and exit") evaluates everything fleet would otherwise have to re-implement: ``Include``
(globs, ``~``), ``Match`` in all its forms (``host=b``, ``originalhost``, ``user``,
``exec``...), comments after values, ``Host`` patterns (``*``, ``?``, ``!``; no character
classes), the first obtained value winning (``ProxyJump`` after ``ProxyCommand``), and the
``Hostname`` tokens. It prints one ``keyword value`` line per setting, keyword in lower
case, a keyword that takes several values (``identityfile``) once per value.

How fleet asks (`ssh_g_argv`): ``ssh -G -F CONFIG [-l USER] [-p PORT] [-o HostName=ADDR]
-o IdentityFile=SENTINEL -- NAME``. Command-line values are obtained first, so the
inventory's explicit values win over the file, as they do for ``ssh -l``/``-p``.
``SENTINEL`` makes OpenSSH list only the configured identity files (it adds its defaults
only when none is set) and is dropped from the answer. ``--`` ends the options, and a
name that ssh would read as something else (``-x``, ``user@host``, ``ssh://``, spaces)
is refused before anything runs. ``-G`` connects to nothing and runs no ProxyCommand;
it does run ``Match exec`` commands (the worker's own file, as ``ssh`` would) and, unlike
a real connection, it does not canonicalize host names (no DNS lookup).

Answers are cached per process, keyed by the config file (path, mtime, size), the name
and the explicit values, for `CACHE_TTL` seconds (an edit of an ``Include``d file is
seen after at most that long).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping

from fleet.textsafe import make_visible_line

#: Seconds an ``ssh -G`` may take (``Match exec`` commands run inside it).
SSH_G_TIMEOUT = 10.0
#: Seconds an answer is reused while the main config file is unchanged.
CACHE_TTL = 60.0
CACHE_MAX = 16384
SENTINEL = "/nonexistent/fleet-ssh-G-no-default-identity"

Effective = Mapping[str, tuple[str, ...]]  # keyword (lower case) -> values in order


class SSHConfigProblem(Exception):
    """The configuration cannot be evaluated for a host; the message names the file."""


_cache: dict[tuple[object, ...], tuple[float, Effective]] = {}
_lock = threading.Lock()
_ssh: tuple[str | None] | None = None


def ssh_binary() -> str | None:
    """The OpenSSH client on PATH (looked up once per process), or None."""
    global _ssh
    if _ssh is None:
        _ssh = (shutil.which("ssh"),)
    return _ssh[0]


def reset_cache() -> None:
    """Forget cached answers and the client's location (tests)."""
    global _ssh
    with _lock:
        _cache.clear()
        _ssh = None


def unsafe_argument(text: str) -> str | None:
    """Why ssh could read `text` (a host name, user or address) as something else."""
    if not text:
        return "is empty"
    if text.startswith("-"):
        return "starts with '-'"
    if any(c.isspace() or not c.isprintable() for c in text):
        return "contains whitespace or a control character"
    if "@" in text or text.lower().startswith("ssh://"):
        return "would be read by ssh as user@host or an ssh:// address"
    if any(c in text for c in "\"'\\#="):
        return "contains a quote, backslash, '#' or '='"
    return None


def ssh_g_argv(
    ssh: str,
    config: str,
    name: str,
    *,
    user: str | None = None,
    port: int | None = None,
    address: str | None = None,
) -> list[str]:
    """The ``ssh -G`` command line; raises `SSHConfigProblem` for an unsafe argument."""
    argv = [ssh, "-G", "-F", config]
    for what, value in (("host name", name), ("user", user), ("address", address)):
        problem = None if value is None else unsafe_argument(value)
        if problem:
            raise SSHConfigProblem(
                f"{what} {make_visible_line(str(value))!r} {problem}: not looked up in {config}"
            )
    if user is not None:
        argv += ["-l", user]
    if port is not None:
        argv += ["-p", str(int(port))]
    if address is not None:
        argv += ["-o", "HostName=" + address.replace("%", "%%")]  # Hostname takes %-tokens
    return [*argv, "-o", "IdentityFile=" + SENTINEL, "--", name]


def parse_output(text: str) -> dict[str, tuple[str, ...]]:
    """``keyword value`` lines into keyword -> values (several for a repeated keyword)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        keyword, _, value = line.strip().partition(" ")
        if keyword:
            found.setdefault(keyword.lower(), []).append(value.strip())
    if "identityfile" in found:
        found["identityfile"] = [p for p in found["identityfile"] if p != SENTINEL]
    return {k: tuple(v) for k, v in found.items()}


def effective_config(
    config: str,
    name: str,
    *,
    user: str | None = None,
    port: int | None = None,
    address: str | None = None,
    ssh: str | None = None,
) -> Effective:
    """What OpenSSH would use for `name` with `config` (an existing file).

    Raises `SSHConfigProblem` (an unsafe argument, a file ssh refuses, a timeout).
    """
    ssh = ssh or ssh_binary()
    if ssh is None:
        raise SSHConfigProblem("the OpenSSH client (ssh) is not installed")
    path = os.path.expanduser(config)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SSHConfigProblem(f"ssh config {path}: {exc.strerror or exc}") from None
    key = (ssh, path, st.st_mtime_ns, st.st_size, name, user, port, address)
    now = time.monotonic()
    with _lock:
        cached = _cache.get(key)
        if cached is not None and now - cached[0] < CACHE_TTL:
            return cached[1]
    argv = ssh_g_argv(ssh, path, name, user=user, port=port, address=address)
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=SSH_G_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SSHConfigProblem(
            f"ssh config {path}: 'ssh -G' did not answer for {name} within "
            f"{SSH_G_TIMEOUT:g} s (a slow Match exec?)"
        ) from None
    except OSError as exc:
        raise SSHConfigProblem(f"cannot run {ssh}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise SSHConfigProblem(f"ssh config {path}: {_first_error(done.stderr)}")
    answer = parse_output(done.stdout.decode("utf-8", "replace"))
    with _lock:
        if len(_cache) >= CACHE_MAX:
            _cache.pop(next(iter(_cache)))
        _cache[key] = (now, answer)
    return answer


def _first_error(stderr: bytes) -> str:
    lines = [
        make_visible_line(line)
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and not line.startswith("Pseudo-terminal")
    ]
    # OpenSSH ends with "terminating, N bad configuration options": the cause is above.
    causes = [line for line in lines if not line.startswith("terminating")]
    return "; ".join((causes or lines)[:2])[:300] or "ssh -G failed"
