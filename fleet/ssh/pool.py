"""A per-process pool of live, authenticated SSH transports.

Transports are keyed by everything that decides whether a connection may be
shared: endpoint, user, jump chain, the credentials offered (identity files,
password reference) and the host key policy. Each command gets its own channel on
a shared transport.

- One connect per key at a time: threads wanting a key that is being connected
  wait for that attempt's outcome (a future) instead of queueing their own. A
  failed connect is remembered for `connect_timeout` seconds, so N tasks to a dead
  host or bastion cost one timeout, not N.
- A key may hold several transports: a server that refuses a new session channel
  (OpenSSH `MaxSessions`, 10 by default) teaches the pool how many channels a
  transport of that key carries, and further leases go to another transport.
- Idle transports are closed after a TTL, dead ones replaced. The size bound is
  kept with idle transports: when every transport is busy, a new key still
  connects, and the least recently used idle transport is closed once released.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paramiko

from fleet.command import ExecOptions
from fleet.results import Status
from fleet.settings import DEFAULTS
from fleet.ssh.connect import Connector
from fleet.ssh.errors import ConnectFailure, SessionRefused
from fleet.ssh.handshakes import HandshakeLimiter, handshake_slot
from fleet.ssh.hostkeys import HostKeyPolicy
from fleet.ssh.sshconfig import Target

T = TypeVar("T")

#: A lease sweeps the pool at most this often (seconds). A sweep scans every pooled
#: transport under the pool's lock: once per lease it made a run O(N^2) in hosts and
#: serialized the worker's threads (bench/README.md, N=2,000). The reaper sweeps too.
SWEEP_EVERY_S = 1.0
Key = tuple[object, ...]


def pool_key(target: Target, options: ExecOptions) -> Key:
    """Leases with equal keys may share a transport."""
    policy = HostKeyPolicy.from_paths(
        options.known_hosts, options.user_known_hosts, options.accept_new_host_keys
    )
    return (target.key, policy)


@dataclass(slots=True, eq=False)
class _Entry:
    transport: Any
    target: Target
    key: Key
    jump_key: Key | None
    last_used: float
    users: int = 0
    channels: int = 0  # open channels counted through `open_channel`
    leases_with_channel: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Lease:
    """A transport lent to one command. `reused`: it was already connected."""

    transport: Any
    target: Target
    reused: bool


class ConnectionPool:
    """Thread-safe; one per worker process (never shared across a fork)."""

    def __init__(
        self,
        connector: Connector | None = None,
        *,
        max_size: int = DEFAULTS.pool_size,
        idle_ttl: float = DEFAULTS.pool_idle_ttl,
        clock: Callable[[], float] = time.monotonic,
        limiter: HandshakeLimiter | None = None,
    ) -> None:
        self.connector = connector or Connector()
        # Handshakes in progress per sshd, shared by the workers (fleet.ssh.handshakes);
        # None: no limit.
        self.limiter = limiter
        self.max_size = max_size
        self.idle_ttl = idle_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Any, _Entry] = {}  # transport -> entry
        self._keyed: dict[Key, list[_Entry]] = {}
        self._pending: dict[Key, Future[None]] = {}
        # key -> (until, the connect timeout it failed with, the failure): a failure is
        # only shared with requests that would have waited exactly as long.
        self._failures: dict[Key, tuple[float, float, ConnectFailure]] = {}
        self._limits: dict[Key, int] = {}  # channels per transport, learned
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None
        self._swept_at = float("-inf")

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def acquire(self, target: Target, options: ExecOptions, *, avoid: Any = None) -> Lease:
        """A live transport for `target`, connecting if needed. Raises `ConnectFailure`.

        `avoid`: a transport not to hand out (it just refused a channel).
        """
        self._start_reaper()
        if self._clock() - self._swept_at >= SWEEP_EVERY_S:
            self.sweep()
        key = pool_key(target, options)
        while True:
            with self._lock:
                now = self._clock()
                failed = self._failures.get(key)
                if failed is not None and failed[0] > now and failed[1] == options.connect_timeout:
                    raise ConnectFailure(failed[2].status, failed[2].message)
                entry = self._available(key, avoid)
                if entry is not None:
                    entry.users += 1
                    entry.last_used = now
                    return Lease(entry.transport, target, True)
                pending = self._pending.get(key)
                mine = pending is None
                if pending is None:
                    pending = self._pending[key] = Future()
            if mine:
                return self._connect(key, target, options, pending)
            try:
                pending.result()
            except ConnectFailure as exc:
                raise ConnectFailure(exc.status, exc.message) from None
            # Connected: look again (the new transport may already be at its limit).

    def _available(self, key: Key, avoid: Any) -> _Entry | None:
        """A live transport of `key` below its channel limit (lock held)."""
        limit = self._limits.get(key)
        for entry in self._keyed.get(key, ()):
            if entry.transport is avoid or not entry.transport.is_active():
                continue
            if limit is None or entry.users < limit:
                return entry
        return None

    def _connect(self, key: Key, target: Target, options: ExecOptions, done: Future[None]) -> Lease:
        try:
            transport = self._open(target, options)
        except ConnectFailure as exc:
            with self._lock:
                timeout = options.connect_timeout
                self._failures[key] = (self._clock() + timeout, timeout, exc)
                del self._pending[key]
            done.set_exception(exc)
            raise
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            done.set_exception(ConnectFailure(Status.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        jump_key = pool_key(target.jump, options) if target.jump is not None else None
        entry = _Entry(transport, target, key, jump_key, self._clock(), users=1)
        with self._lock:
            self._entries[transport] = entry
            self._keyed.setdefault(key, []).append(entry)
            self._failures.pop(key, None)
            del self._pending[key]
        done.set_result(None)
        self._evict()
        return Lease(transport, target, False)

    def open_channel(self, lease: Lease, opener: Callable[[Any], T]) -> T:
        """`opener(transport)`, counting the channel. A refused session
        (`paramiko.ChannelException`, `SessionRefused`) teaches the key's limit,
        then re-raises."""
        try:
            channel = opener(lease.transport)
        except (paramiko.ChannelException, SessionRefused):
            with self._lock:
                entry = self._entries.get(lease.transport)
                if entry is not None:
                    learned = max(1, entry.channels)
                    self._limits[entry.key] = min(self._limits.get(entry.key, learned), learned)
            raise
        with self._lock:
            entry = self._entries.get(lease.transport)
            if entry is not None and id(lease) not in entry.leases_with_channel:
                entry.leases_with_channel.add(id(lease))
                entry.channels += 1
        return channel

    def release(self, lease: Lease) -> None:
        with self._lock:
            entry = self._entries.get(lease.transport)
            if entry is not None:
                entry.users = max(0, entry.users - 1)
                entry.last_used = self._clock()
                if id(lease) in entry.leases_with_channel:
                    entry.leases_with_channel.discard(id(lease))
                    entry.channels -= 1
                retired = entry not in self._keyed.get(entry.key, ())
                if retired and entry.users == 0:
                    self._forget(lease.transport)
                else:
                    entry = None
        if entry is not None:
            lease.transport.close()  # retired and now unused
        self._evict()

    def discard(self, lease: Lease) -> None:
        """Forget and close a transport found dead (its other users will fail too)."""
        with self._lock:
            self._forget(lease.transport)
        lease.transport.close()

    def retire(self, lease: Lease) -> None:
        """No new leases for this transport (it stopped answering); it is closed
        once its current users have released it."""
        with self._lock:
            entry = self._entries.get(lease.transport)
            if entry is not None and entry in self._keyed.get(entry.key, ()):
                self._keyed[entry.key].remove(entry)
                entry.last_used = float("-inf")  # first to go when idle

    def _forget(self, transport: Any) -> None:
        """Drop a transport from every index (lock held)."""
        entry = self._entries.pop(transport, None)
        if entry is None:
            return
        siblings = self._keyed.get(entry.key)
        if siblings is not None and entry in siblings:
            siblings.remove(entry)
        if not siblings:
            self._keyed.pop(entry.key, None)
            self._limits.pop(entry.key, None)

    def sweep(self) -> None:
        """Close transports idle past the TTL, retired or dead; forget old failures."""
        now = self._clock()
        with self._lock:
            self._swept_at = now
            jumps = self._jump_keys()
            doomed = [
                e.transport
                for e in self._entries.values()
                if e.users == 0
                and e.key not in jumps
                and (
                    now - e.last_used > self.idle_ttl
                    or not e.transport.is_active()
                    or e not in self._keyed.get(e.key, ())
                )
            ]
            for transport in doomed:
                self._forget(transport)
            for key in [k for k, (until, _, _) in self._failures.items() if until <= now]:
                del self._failures[key]
        for transport in doomed:
            transport.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            closing = list(self._entries)
            self._entries.clear()
            self._keyed.clear()
            self._limits.clear()
        for transport in closing:
            transport.close()

    def _jump_keys(self) -> set[Key]:
        return {e.jump_key for e in self._entries.values() if e.jump_key is not None}

    def release_excess(self) -> None:
        """Close idle transports beyond `max_size` (after the bound was lowered)."""
        self._evict()

    def _evict(self) -> None:
        """Keep the pool bounded: close the least recently used idle transports."""
        with self._lock:
            excess = len(self._entries) - self.max_size
            if excess <= 0:
                return
            jumps = self._jump_keys()
            idle = sorted(
                (e for e in self._entries.values() if e.users == 0 and e.key not in jumps),
                key=lambda e: e.last_used,
            )
            closing = [e.transport for e in idle[:excess]]
            for transport in closing:
                self._forget(transport)
        for transport in closing:
            transport.close()

    def _open(self, target: Target, options: ExecOptions) -> Any:
        if target.jump is None:
            with handshake_slot(self.limiter, target, options):
                sock = self.connector.open_socket(target, options)
                return self.connector.connect(target, sock, options)
        # With a limit, the jump host is connected first (its handshake takes and frees
        # its own slot): no slot is held while waiting for another, so chains that cross
        # (a via b, b via a) cannot wait on each other. A failure is remembered by the
        # pool and worded by `_open_through_jump`.
        ready = self._warm_jump(target.jump, options) if self.limiter is not None else None
        try:
            with handshake_slot(self.limiter, target, options):
                channel = self._open_through_jump(target, options)
                return self.connector.connect(target, channel, options)
        finally:
            if ready is not None:
                self.release(ready)

    def _warm_jump(self, jump: Target, options: ExecOptions) -> Lease | None:
        try:
            return self.acquire(jump, options)
        except ConnectFailure:
            return None

    def _open_through_jump(self, target: Target, options: ExecOptions) -> Any:
        assert target.jump is not None
        jump = target.jump
        for attempt in range(2):
            try:
                lease = self.acquire(jump, options)
            except ConnectFailure as exc:
                raise ConnectFailure(exc.status, f"jump host {jump.label}: {exc.message}") from None
            try:
                return lease.transport.open_channel(
                    "direct-tcpip",
                    (target.address, target.port),
                    ("127.0.0.1", 0),
                    timeout=options.connect_timeout,
                )
            except paramiko.ChannelException as exc:
                raise ConnectFailure(
                    Status.UNREACHABLE,
                    f"jump host {jump.label} could not reach {target.address}:{target.port}: "
                    f"{exc.text}",
                ) from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                self.discard(lease)
                if not (lease.reused and attempt == 0):
                    raise ConnectFailure(
                        Status.UNREACHABLE,
                        f"jump host {jump.label}: cannot open a tunnel: "
                        f"{exc or type(exc).__name__}",
                    ) from None
            finally:
                self.release(lease)
        raise AssertionError("unreachable")

    def _start_reaper(self) -> None:
        if self._reaper is not None:
            return
        with self._lock:
            if self._reaper is not None:
                return
            self._reaper = threading.Thread(
                target=self._reap, name="fleet-ssh-pool-reaper", daemon=True
            )
            self._reaper.start()

    def _reap(self) -> None:
        interval = max(0.5, min(self.idle_ttl / 2, 30.0))
        while not self._closed.wait(interval):
            self.sweep()
