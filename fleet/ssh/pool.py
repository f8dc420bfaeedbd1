"""A per-process pool of live, authenticated SSH transports.

Transports are keyed by (address, port, user, jump) and shared: each command gets
its own channel. A per-key lock keeps two threads from opening two connections to
the same new host, while different hosts connect in parallel. Idle transports are
closed after a TTL, dead ones replaced, and the pool is bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import paramiko

from fleet.execute import ExecOptions
from fleet.results import Status
from fleet.ssh.connect import Connector
from fleet.ssh.errors import ConnectFailure
from fleet.ssh.sshconfig import Target


@dataclass(slots=True)
class _Entry:
    transport: Any
    target: Target
    last_used: float
    users: int = 0


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
        max_size: int = 256,
        idle_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connector = connector or Connector()
        self.max_size = max_size
        self.idle_ttl = idle_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[object, ...], _Entry] = {}
        self._key_locks: dict[tuple[object, ...], threading.Lock] = {}
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @contextmanager
    def lease(self, target: Target, options: ExecOptions) -> Iterator[Lease]:
        lease = self.acquire(target, options)
        try:
            yield lease
        finally:
            self.release(lease)

    def acquire(self, target: Target, options: ExecOptions) -> Lease:
        """A live transport for `target`, connecting if needed. Raises `ConnectFailure`."""
        self._start_reaper()
        self.sweep()
        key = target.key
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            stale = None
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.transport.is_active():
                    entry.users += 1
                    entry.last_used = self._clock()
                    return Lease(entry.transport, target, True)
                if entry is not None:
                    stale = self._entries.pop(key).transport
            if stale is not None:
                stale.close()
            transport = self._open(target, options)
            with self._lock:
                self._entries[key] = _Entry(transport, target, self._clock(), users=1)
            self._evict()
            return Lease(transport, target, False)

    def release(self, lease: Lease) -> None:
        with self._lock:
            entry = self._entries.get(lease.target.key)
            if entry is not None and entry.transport is lease.transport:
                entry.users = max(0, entry.users - 1)
                entry.last_used = self._clock()

    def discard(self, lease: Lease) -> None:
        """Forget and close a transport found dead (its other users will fail too)."""
        with self._lock:
            entry = self._entries.get(lease.target.key)
            if entry is not None and entry.transport is lease.transport:
                del self._entries[lease.target.key]
        lease.transport.close()

    def sweep(self) -> None:
        """Close transports idle past the TTL and drop dead ones."""
        now = self._clock()
        with self._lock:
            jumps = self._jump_keys()
            doomed = [
                key
                for key, e in self._entries.items()
                if e.users == 0
                and key not in jumps
                and (now - e.last_used > self.idle_ttl or not e.transport.is_active())
            ]
            closing = [self._entries.pop(key).transport for key in doomed]
        for transport in closing:
            transport.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            closing = [e.transport for e in self._entries.values()]
            self._entries.clear()
        for transport in closing:
            transport.close()

    def _jump_keys(self) -> set[tuple[object, ...]]:
        return {e.target.jump.key for e in self._entries.values() if e.target.jump}

    def _evict(self) -> None:
        """Keep the pool bounded: close the least recently used idle transports."""
        with self._lock:
            excess = len(self._entries) - self.max_size
            if excess <= 0:
                return
            jumps = self._jump_keys()
            idle = sorted(
                (e.last_used, key)
                for key, e in self._entries.items()
                if e.users == 0 and key not in jumps
            )
            closing = [self._entries.pop(key).transport for _, key in idle[:excess]]
        for transport in closing:
            transport.close()

    def _open(self, target: Target, options: ExecOptions) -> Any:
        if target.jump is None:
            sock = self.connector.open_socket(target, options)
            return self.connector.connect(target, sock, options)
        channel = self._open_through_jump(target, options)
        return self.connector.connect(target, channel, options)

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
