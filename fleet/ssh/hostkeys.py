"""Host key checking as OpenSSH does it, without ever trusting silently.

Known keys come from the user's known_hosts and fleet's own file. An unknown key
is rejected unless accept-new is on, in which case it is appended once (under a
file lock, re-checked inside it, so concurrent threads and processes record it
once). A changed key is always rejected, with both fingerprints.

We read known_hosts ourselves rather than through `paramiko.HostKeys`: its lookup
compares names exactly (case-sensitively) or by hash, so it knows neither `*`/`?`
wildcards nor `!` negation, and its parser takes an `@revoked`/`@cert-authority`
marker for a host name, then fails to decode the key and raises out of
`HostKeys.load`: one such line made the whole file unreadable for every host.
Names are looked up as `host_key_name` spells them (`[addr]:port` off port 22). As
OpenSSH does, when no entry exists for `[addr]:port` the port-less `addr` entries are
used too: a matching key there is accepted; a different key there makes the key
unknown for this port (accept-new records it under `[addr]:port`), never "changed"
(sshconnect.c, check_host_key: its lookup of the port-less "host" name).

A run looks up every one of its hosts in the same files, so each parsed file
version carries an index (`_Section`): plain names in a dict, wildcard and negated
patterns compiled once at parse time, hashed names decoded once, and each host's
answer remembered for that file version, so a host costs one HMAC per hashed line
the first time it is looked up and a dict lookup after that. Matching lines are
always returned in file order.
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
from dataclasses import dataclass, field

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from fleet.results import Status
from fleet.ssh.errors import ConnectFailure

# path -> ((mtime_ns, size, inode, ctime_ns), parsed): a rewrite or a replace shows.
_cache: dict[str, tuple[tuple[int, int, int, int], _KnownHosts]] = {}
_cache_lock = threading.Lock()
# path -> the lock of its parse: the threads that miss the cache together (a cold run
# starts a worker's every slot at once) wait for one parse instead of each doing it
# (15 parses of one file in one cold run of 200 hosts, measured with yappi).
_parse_locks: dict[str, threading.Lock] = {}

# Answers remembered per parsed file version; past this many hosts the memo restarts.
_MEMO_MAX = 1 << 16

# Server host key algorithms paramiko can negotiate for each known key type.
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def host_key_name(address: str, port: int) -> str:
    """The known_hosts name OpenSSH uses: `addr`, or `[addr]:port` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


def portless_name(name: str) -> str | None:
    """``addr`` of a ``[addr]:port`` known_hosts name; None for a port-less name."""
    if name.startswith("[") and "]:" in name:
        return name[1 : name.rindex("]:")]
    return None


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


@dataclass(frozen=True, slots=True)
class _Line:
    names: tuple[str, ...]  # host patterns, or one hashed name (|1|salt|hash)
    key: paramiko.PKey


@dataclass(frozen=True, slots=True)
class _Matcher:
    """One line's names, prepared once. OpenSSH's rules: any pattern matches and no
    negated one does; names compare lower-cased (hashed ones hash the lower-cased host)."""

    plain: frozenset[str]
    wild: tuple[re.Pattern[str], ...]
    hashed: tuple[tuple[bytes, bytes], ...]  # (salt, HMAC-SHA1 of the host)
    negated: tuple[re.Pattern[str], ...]

    def matches(self, host: str, raw: bytes | None) -> bool:
        """`host` lower-cased; `raw` its UTF-8 bytes (None: not encodable, no hash matches)."""
        if any(p.fullmatch(host) for p in self.negated):
            return False
        if host in self.plain or any(p.fullmatch(host) for p in self.wild):
            return True
        return raw is not None and any(
            hmac.compare_digest(hmac.digest(salt, raw, "sha1"), digest)
            for salt, digest in self.hashed
        )


@dataclass(frozen=True, slots=True, eq=False)
class _Section:
    """The plain-key lines or the @revoked lines of one file version, indexed.

    `plain` maps a lower-cased name to the lines (file order) whose names are all
    plain (no wildcard, negation or hash); every other line is in `special` with its
    `_Matcher`. `memo` remembers each host's answer: `special` is scanned once per host.
    """

    lines: tuple[_Line, ...]
    plain: dict[str, tuple[int, ...]]
    special: tuple[tuple[int, _Matcher], ...]
    memo: dict[str, tuple[paramiko.PKey, ...]] = field(default_factory=dict)

    def find(self, host: str) -> tuple[paramiko.PKey, ...]:
        """Keys of the lines naming `host`, in file order."""
        host = host.lower()
        if not self.special:
            return tuple(self.lines[i].key for i in self.plain.get(host, ()))
        found = self.memo.get(host)
        if found is None:
            try:
                raw: bytes | None = host.encode()
            except UnicodeError:
                raw = None
            hits = [i for i, m in self.special if m.matches(host, raw)]
            hits.extend(self.plain.get(host, ()))  # a line is in one of the two, never both
            found = tuple(self.lines[i].key for i in sorted(hits))
            if len(self.memo) >= _MEMO_MAX:
                self.memo.clear()
            self.memo[host] = found
        return found


@dataclass(frozen=True, slots=True)
class _KnownHosts:
    keys: _Section
    revoked: _Section


def _pattern(text: str) -> re.Pattern[str]:
    # Only `*` and `?` are wildcards: `[addr]:port` brackets are literal.
    escaped = re.escape(text.lower()).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(escaped)


def _compiled(text: str, compiled: dict[str, re.Pattern[str]]) -> re.Pattern[str]:
    pattern = compiled.get(text)
    if pattern is None:
        pattern = compiled[text] = _pattern(text)
    return pattern


def _is_plain(name: str) -> bool:
    return not name.startswith(("|1|", "!")) and "*" not in name and "?" not in name


def _hashed(name: str) -> tuple[bytes, bytes] | None:
    """`|1|salt|hash` as (salt, hash) bytes, or None if it can never match.

    A host matches when paramiko's `hash_host(host, name)` gives back `name` exactly,
    so salt and hash must be canonical base64 (20 bytes each, as HMAC-SHA1 makes)."""
    parts = name.split("|")
    if len(parts) != 4:
        return None
    try:
        salt = base64.decodebytes(parts[2].encode())
        digest = base64.b64decode(parts[3])
    except (ValueError, binascii.Error):
        return None
    canonical = (base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    if len(salt) != 20 or len(digest) != 20 or canonical != (parts[2], parts[3]):
        return None
    return salt, digest


def _matcher(names: tuple[str, ...], compiled: dict[str, re.Pattern[str]]) -> _Matcher:
    plain: set[str] = set()
    wild: list[re.Pattern[str]] = []
    hashed: list[tuple[bytes, bytes]] = []
    negated: list[re.Pattern[str]] = []
    for name in names:
        if name.startswith("|1|"):
            pair = _hashed(name)
            if pair is not None:
                hashed.append(pair)
        elif name.startswith("!"):
            negated.append(_compiled(name[1:], compiled))
        elif _is_plain(name):
            plain.add(name.lower())
        else:
            wild.append(_compiled(name, compiled))
    return _Matcher(frozenset(plain), tuple(wild), tuple(hashed), tuple(negated))


def _section(lines: list[_Line], compiled: dict[str, re.Pattern[str]]) -> _Section:
    plain: dict[str, list[int]] = {}
    special: list[tuple[int, _Matcher]] = []
    for i, line in enumerate(lines):
        if all(_is_plain(name) for name in line.names):
            for name in dict.fromkeys(name.lower() for name in line.names):
                plain.setdefault(name, []).append(i)
        else:
            special.append((i, _matcher(line.names, compiled)))
    return _Section(tuple(lines), {name: tuple(ix) for name, ix in plain.items()}, tuple(special))


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
    compiled: dict[str, re.Pattern[str]] = {}  # a pattern on many lines is compiled once
    return _KnownHosts(_section(keys, compiled), _section(revoked, compiled))


def _load(path: str, *, fresh: bool = False) -> _KnownHosts | None:
    """Parsed and indexed file, cached per file version: big known_hosts are parsed once,
    by one thread while the others that want the same version wait for it. `fresh`:
    parse again whatever the cache holds."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
    if not fresh and (cached := _cached(path, stamp)) is not None:
        return cached
    with _cache_lock:
        parse_lock = _parse_locks.setdefault(path, threading.Lock())
    with parse_lock:
        # Another thread may have parsed this very version while we waited.
        if not fresh and (cached := _cached(path, stamp)) is not None:
            return cached
        try:
            parsed = _parse(path)
        except OSError:
            return None
        with _cache_lock:
            _cache[path] = (stamp, parsed)
    return parsed


def _cached(path: str, stamp: tuple[int, int, int, int]) -> _KnownHosts | None:
    with _cache_lock:
        cached = _cache.get(path)
    return cached[1] if cached and cached[0] == stamp else None


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
            section = parsed.revoked if revoked else parsed.keys
            found.extend((path, key) for key in section.find(name))
        return found

    def preferred_algorithms(self, name: str, offered: tuple[str, ...]) -> tuple[str, ...]:
        """Known key types first, so the server shows the key we can check (as OpenSSH)."""
        known: list[str] = []
        plain = portless_name(name)
        keys = self.known_keys(name) or (self.known_keys(plain) if plain else [])
        for _, key in keys:
            known.extend(_ALGORITHMS.get(key.get_name(), (key.get_name(),)))
        first = [a for a in dict.fromkeys(known) if a in offered]
        return tuple(first + [a for a in offered if a not in first])

    def verify(self, name: str, key: paramiko.PKey) -> None:
        """Accept `key` for `name` or raise `ConnectFailure` (hostkey_rejected)."""
        plain = portless_name(name)
        revoked = self.revoked_keys(name) + (self.revoked_keys(plain) if plain else [])
        for path, bad in revoked:
            if bad.asbytes() == key.asbytes():
                raise ConnectFailure(
                    Status.HOSTKEY_REJECTED,
                    f"host key for {name} is REVOKED: the host offered {fingerprint(key)}, "
                    f"marked @revoked in {path}. Refusing to connect",
                )
        known = self.known_keys(name)
        # No `[addr]:port` entry: OpenSSH falls back to the port-less name. Only a
        # matching key counts; another key there is "unknown" for this port.
        if (
            not known
            and plain is not None
            and any(k.asbytes() == key.asbytes() for _, k in self.known_keys(plain))
        ):
            return
        self._check(name, key, known)

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
                "or allow trust on first use with --accept-new-host-keys (a worker takes it "
                "only with FLEET_ACCEPT_NEW_HOST_KEYS=1 in its own environment)",
            )
        self._record(name, key)

    def _record(self, name: str, key: paramiko.PKey) -> None:
        assert self.record_to is not None
        path = self.record_to
        # fleet's known_hosts lives in FLEET_HOME, created 0700 like the embedded history
        # (README, "Security defaults"); its lock file is as private as the file.
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        lock_fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(lock_fd, "a") as lock:
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
