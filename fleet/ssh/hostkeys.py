"""Host key checking as OpenSSH does it, without ever trusting silently.

Known keys come from the user's known_hosts and fleet's own file. An unknown key
is rejected unless accept-new is on, in which case it is appended once (under a
file lock, re-checked inside it, so concurrent threads and processes record it
once). A changed key is always rejected, with both fingerprints.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import os
import re
import threading
from dataclasses import dataclass

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from fleet.results import Status
from fleet.ssh.errors import ConnectFailure

_cache: dict[str, tuple[tuple[float, int], _KnownHosts]] = {}
_cache_lock = threading.Lock()

# Server host key algorithms paramiko can negotiate for each known key type.
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def host_key_name(address: str, port: int) -> str:
    """The known_hosts name OpenSSH uses: `addr`, or `[addr]:port` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


@dataclass(frozen=True, slots=True)
class _Line:
    names: tuple[str, ...]  # host patterns, or one hashed name (|1|salt|hash)
    key: paramiko.PKey

    def matches(self, host: str) -> bool:
        """OpenSSH's rules: any pattern matches and no negated one does."""
        host = host.lower()
        hit = False
        for name in self.names:
            if name.startswith("|1|"):
                hit = hit or _hashed_match(name, host)
            elif name.startswith("!"):
                if _pattern(name[1:]).fullmatch(host):
                    return False
            elif _pattern(name).fullmatch(host):
                hit = True
        return hit


@dataclass(frozen=True, slots=True)
class _KnownHosts:
    keys: tuple[_Line, ...]
    revoked: tuple[_Line, ...]


def _pattern(text: str) -> re.Pattern[str]:
    # Only `*` and `?` are wildcards: `[addr]:port` brackets are literal.
    escaped = re.escape(text.lower()).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(escaped)


def _hashed_match(hashed: str, host: str) -> bool:
    try:
        return hmac.compare_digest(paramiko.HostKeys.hash_host(host, hashed), hashed)
    except (ValueError, TypeError, binascii.Error, AssertionError):
        return False


def _parse(path: str) -> _KnownHosts:
    """A known_hosts file as OpenSSH reads it; lines we cannot use are skipped.

    `@cert-authority` lines are skipped: fleet does not check host certificates
    (paramiko cannot), so such hosts need a plain key line to be trusted.
    `@revoked` keys are never accepted for the hosts they name.
    """
    keys: list[_Line] = []
    revoked: list[_Line] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            sink = keys
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
                if marker == "@revoked":
                    sink = revoked
                else:
                    continue  # @cert-authority, or a marker we do not know
            try:
                entry = HostKeyEntry.from_line(line.strip(), lineno)
            except (InvalidHostKey, paramiko.SSHException, ValueError, binascii.Error):
                continue  # as OpenSSH: a bad line is skipped, not fatal for every host
            if entry is not None and entry.key is not None:
                sink.append(_Line(tuple(entry.hostnames), entry.key))
    return _KnownHosts(tuple(keys), tuple(revoked))


def _load(path: str, *, fresh: bool = False) -> _KnownHosts | None:
    """Parsed file, cached by (mtime, size): big known_hosts files are parsed once."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_mtime, st.st_size)
    if not fresh:
        with _cache_lock:
            cached = _cache.get(path)
            if cached and cached[0] == stamp:
                return cached[1]
    try:
        parsed = _parse(path)
    except OSError:
        return None
    with _cache_lock:
        _cache[path] = (stamp, parsed)
    return parsed


@dataclass(frozen=True, slots=True)
class HostKeyPolicy:
    """Which files to read, which to record new keys in, and whether to record at all."""

    files: tuple[str, ...]
    record_to: str | None
    accept_new: bool = False

    @classmethod
    def from_paths(cls, own: str | None, user: str | None, accept_new: bool) -> HostKeyPolicy:
        paths = [os.path.expanduser(p) for p in (user, own) if p and p.lower() != "none"]
        record = own or user
        return cls(
            tuple(dict.fromkeys(paths)),
            os.path.expanduser(record) if record else None,
            accept_new,
        )

    def known_keys(self, name: str, *, fresh: bool = False) -> list[tuple[str, paramiko.PKey]]:
        return self._find(name, fresh=fresh, revoked=False)

    def revoked_keys(self, name: str) -> list[tuple[str, paramiko.PKey]]:
        return self._find(name, fresh=False, revoked=True)

    def _find(self, name: str, *, fresh: bool, revoked: bool) -> list[tuple[str, paramiko.PKey]]:
        found: list[tuple[str, paramiko.PKey]] = []
        for path in self.files:
            parsed = _load(path, fresh=fresh)
            if parsed is None:
                continue
            lines = parsed.revoked if revoked else parsed.keys
            found.extend((path, line.key) for line in lines if line.matches(name))
        return found

    def preferred_algorithms(self, name: str, offered: tuple[str, ...]) -> tuple[str, ...]:
        """Known key types first, so the server shows the key we can check (as OpenSSH)."""
        known: list[str] = []
        for _, key in self.known_keys(name):
            known.extend(_ALGORITHMS.get(key.get_name(), (key.get_name(),)))
        first = [a for a in dict.fromkeys(known) if a in offered]
        return tuple(first + [a for a in offered if a not in first])

    def verify(self, name: str, key: paramiko.PKey) -> None:
        """Accept `key` for `name` or raise `ConnectFailure` (hostkey_rejected)."""
        for path, bad in self.revoked_keys(name):
            if bad.asbytes() == key.asbytes():
                raise ConnectFailure(
                    Status.HOSTKEY_REJECTED,
                    f"host key for {name} is REVOKED: the host offered {fingerprint(key)}, "
                    f"marked @revoked in {path}. Refusing to connect",
                )
        self._check(name, key, self.known_keys(name))

    def _check(self, name: str, key: paramiko.PKey, known: list[tuple[str, paramiko.PKey]]) -> None:
        if any(k.asbytes() == key.asbytes() for _, k in known):
            return
        if known:
            old = "; ".join(f"{fingerprint(k)} (in {path})" for path, k in known)
            raise ConnectFailure(
                Status.HOSTKEY_REJECTED,
                f"host key for {name} has CHANGED: the host offered {fingerprint(key)}, "
                f"known_hosts has {old}. Someone may be impersonating the host; if the "
                "change is expected, remove the old key from known_hosts",
            )
        if not self.accept_new or not self.record_to:
            raise ConnectFailure(
                Status.HOSTKEY_REJECTED,
                f"unknown host key for {name}: {fingerprint(key)}; add it to known_hosts "
                "or allow trust on first use with --accept-new-host-keys",
            )
        self._record(name, key)

    def _record(self, name: str, key: paramiko.PKey) -> None:
        assert self.record_to is not None
        path = self.record_to
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                # Another thread or process may have recorded a key meanwhile.
                known = self.known_keys(name, fresh=True)
                if known:
                    self._check(name, key, known)
                    return
                line = f"{name} {key.get_name()} {key.get_base64()}\n"
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = "\n" + line  # a hand-edited file without a final newline
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
