"""A cluster-wide limit on SSH handshakes in progress per sshd (OpenSSH `MaxStartups`).

sshd drops new connections at random once more than 10 are still unauthenticated
(``MaxStartups 10:30:100``, sshd_config(5)): a jump host or a small sshd that every
worker handshakes with at once loses hosts. So each handshake the pool makes (TCP
connect, banner, key exchange, host key check, authentication: until logged in) first
takes one of `limit` slots of its endpoint, counted across every worker process in a
shared slot table (the run store: Redis, or the embedded SQLite history).

- The endpoint is the ``address:port`` of the sshd the handshake is made with, as
  written (names are not resolved): one listening sshd is one `MaxStartups` budget, so
  hosts on one address with different ports are different endpoints, and hosts sharing
  an address and port (other users, other keys) share one. A jump host's own
  handshakes count against the jump host; a host reached through it counts against the
  host's own endpoint: the jump host relays that handshake over a logged-in connection,
  which `MaxStartups` does not count.
- Only a new connection handshakes: a lease of a pooled (warm) transport takes no slot.
- Waiting for a slot does not spend the connect timeout: a queued host is not
  `unreachable` because others were slow. The wait is bounded by the host's budget
  (connect + auth + command timeouts, the per-host time a run's deadline is sized
  from; `slot_wait_s`); a host that finds no slot in that time ends `unreachable`,
  saying so, never contacted. A run's deadline still ends the run as always.
- A slot is held at most `slot_hold_s` (longer than any handshake can last), so a
  worker killed in mid-handshake gives its slots back by itself. Once logged in, the
  slot stays taken `LINGER_S` more: sshd's listener counts a login as done only when
  its monitor process reports it, a moment after the client saw it succeed (measured
  on the test harness, 8 slots, a stock sshd: without the linger 2 runs in 10 lost a
  host to `MaxStartups`, with it none in 14).
- Waiters ask again after a jittered, growing pause (so workers do not retry in
  lockstep), and at once when a slot of their own process frees. Within a process at
  most `limit` threads per endpoint ask the shared table; the others wait locally.
- The shared table unreachable (a `BackendError`): the handshake goes ahead, limited
  within its process only; a store outage never fails a host by itself.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from fleet.command import ExecOptions
from fleet.errors import BackendError
from fleet.results import Status
from fleet.ssh.errors import ConnectFailure
from fleet.ssh.sshconfig import Target

log = logging.getLogger(__name__)

#: Added to the longest a handshake can take before its slot lapses (seconds).
HOLD_MARGIN_S = 5.0
#: Seconds a slot stays taken after the login: sshd's own accounting catches up.
LINGER_S = 0.1
#: First pause before asking the shared table again, then doubled up to the second.
FIRST_RETRY_S = 0.02
MAX_RETRY_S = 0.5


class HandshakeSlots(Protocol):
    """The shared slot table (`RunStore.take_slot` / `release_slot`; an endpoint's scope
    is `handshake_scope(endpoint)`)."""

    def take_slot(self, scope: str, holder: str, limit: int, hold_s: float) -> int:
        """Take one of `scope`'s `limit` slots for `holder`, held at most `hold_s`
        seconds; 0 (false) when all are taken. Raises `BackendError`."""
        ...

    def release_slot(self, scope: str, holder: str, linger_s: float = 0.0) -> None:
        """Give `holder`'s slot back `linger_s` seconds from now (0: at once; nothing if
        it holds none). Raises `BackendError`."""
        ...


def handshake_scope(endpoint: str) -> str:
    """The slot scope of an sshd endpoint (``address:port``)."""
    return f"handshake:{endpoint}"


@dataclass(frozen=True, slots=True)
class HandshakeToken:
    """One slot held. `shared`: counted in the shared table (False when it was down)."""

    endpoint: str
    holder: str
    shared: bool = True


class NoSlot(Exception):
    """No slot of `endpoint` freed within the wait."""

    def __init__(self, endpoint: str, waited_s: float) -> None:
        super().__init__(f"no handshake slot for {endpoint} within {waited_s:g} s")
        self.endpoint = endpoint
        self.waited_s = waited_s


class HandshakeLimiter(Protocol):
    """What the pool asks before each handshake; `limit` slots per endpoint."""

    @property
    def limit(self) -> int: ...

    def acquire(self, endpoint: str, *, hold_s: float, wait_s: float) -> HandshakeToken:
        """A slot of `endpoint`, waiting up to `wait_s` seconds; it lapses after
        `hold_s` seconds if never released. Raises `NoSlot`."""
        ...

    def release(self, token: HandshakeToken) -> None:
        """Give the slot back; never raises for a store outage."""
        ...


class SharedLimiter:
    """`limit` handshakes in progress per endpoint across every process sharing `slots`.

    Thread-safe; one per process (its local bookkeeping does not cross a fork).
    `clock`, `rng` and the retry pauses are injectable for tests.
    """

    def __init__(
        self,
        slots: HandshakeSlots,
        limit: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        first_retry_s: float = FIRST_RETRY_S,
        max_retry_s: float = MAX_RETRY_S,
        linger_s: float = LINGER_S,
    ) -> None:
        if limit < 1:
            raise ValueError(f"handshake limit must be at least 1, got {limit}")
        self._slots = slots
        self._limit = limit
        self._clock = clock
        self._rng = rng
        self._first_retry_s = first_retry_s
        self._max_retry_s = max_retry_s
        self._linger_s = linger_s
        self._changed = threading.Condition()
        self._local: dict[str, int] = {}  # endpoint -> this process's threads past the gate
        self._store_down_said = False

    @property
    def limit(self) -> int:
        return self._limit

    def acquire(self, endpoint: str, *, hold_s: float, wait_s: float) -> HandshakeToken:
        give_up = self._clock() + wait_s
        self._enter(endpoint, give_up, wait_s)
        try:
            return self._take(endpoint, hold_s, give_up, wait_s)
        except BaseException:
            self._leave(endpoint)
            raise

    def release(self, token: HandshakeToken) -> None:
        try:
            if token.shared:
                self._slots.release_slot(
                    handshake_scope(token.endpoint), token.holder, self._linger_s
                )
        except BackendError:
            pass  # the slot lapses by itself after its hold time
        finally:
            self._leave(token.endpoint)

    def in_progress(self, endpoint: str) -> int:
        """This process's threads holding or asking for a slot of `endpoint`."""
        with self._changed:
            return self._local.get(endpoint, 0)

    def _enter(self, endpoint: str, give_up: float, wait_s: float) -> None:
        # A process never holds more than `limit` slots of an endpoint, so more threads
        # than that asking the shared table would only add load: the rest wait here.
        with self._changed:
            while self._local.get(endpoint, 0) >= self._limit:
                left = give_up - self._clock()
                if left <= 0:
                    raise NoSlot(endpoint, wait_s)
                self._changed.wait(left)
            self._local[endpoint] = self._local.get(endpoint, 0) + 1

    def _leave(self, endpoint: str) -> None:
        with self._changed:
            count = self._local.get(endpoint, 0) - 1
            if count > 0:
                self._local[endpoint] = count
            else:
                self._local.pop(endpoint, None)
            self._changed.notify_all()

    def _take(self, endpoint: str, hold_s: float, give_up: float, wait_s: float) -> HandshakeToken:
        holder = uuid.uuid4().hex
        pause = self._first_retry_s
        while True:
            try:
                if self._slots.take_slot(handshake_scope(endpoint), holder, self._limit, hold_s):
                    return HandshakeToken(endpoint, holder)
            except BackendError as exc:
                self._say_store_down(exc)
                return HandshakeToken(endpoint, holder, shared=False)
            left = give_up - self._clock()
            if left <= 0:
                raise NoSlot(endpoint, wait_s)
            # Full jitter around the growing pause; a slot freed in this process
            # (notify_all in `_leave`) ends the pause early.
            with self._changed:
                self._changed.wait(min(left, pause * (0.5 + self._rng())))
            pause = min(self._max_retry_s, pause * 2)

    def _say_store_down(self, exc: BackendError) -> None:
        if not self._store_down_said:
            self._store_down_said = True
            log.warning(
                "fleet: handshake slots not shared (%s): limiting handshakes within "
                "this process only until the store answers",
                exc,
            )


def shared_limiter(slots: HandshakeSlots, limit: int) -> SharedLimiter | None:
    """The limiter a worker (or the embedded worker) gives its pool: `limit` slots per
    endpoint in `slots` (setting ``handshakes_per_target``); None (no limit) below 1."""
    return SharedLimiter(slots, limit) if limit > 0 else None


def endpoint_of(target: Target) -> str:
    """``address:port`` (``[v6]:port``) of the sshd a handshake with `target` reaches."""
    address = f"[{target.address}]" if ":" in target.address else target.address
    return f"{address}:{target.port}"


def slot_hold_s(options: ExecOptions) -> float:
    """Longest a handshake can take, plus a margin: TCP connect (or a jump host's
    tunnel) and key exchange each within the connect timeout, then the login."""
    return 2 * options.connect_timeout + options.auth_timeout + HOLD_MARGIN_S


def slot_wait_s(options: ExecOptions) -> float:
    """Longest a handshake waits for a slot: the host's budget (connect + auth +
    command timeouts, as `fleet.lifecycle.host_budget` counts it)."""
    return options.connect_timeout + options.auth_timeout + options.command_timeout


@contextmanager
def handshake_slot(
    limiter: HandshakeLimiter | None, target: Target, options: ExecOptions
) -> Iterator[None]:
    """Hold a slot of `target`'s endpoint while inside (nothing with no limiter).

    Raises `ConnectFailure` (`unreachable`) when none freed within `slot_wait_s`.
    """
    if limiter is None:
        yield
        return
    endpoint = endpoint_of(target)
    try:
        token = limiter.acquire(endpoint, hold_s=slot_hold_s(options), wait_s=slot_wait_s(options))
    except NoSlot as exc:
        raise ConnectFailure(
            Status.UNREACHABLE,
            f"not contacted: no handshake slot for {endpoint} freed within "
            f"{exc.waited_s:g} s ({limiter.limit} handshakes with it in progress "
            "across the workers all along; FLEET_HANDSHAKES_PER_TARGET)",
        ) from None
    try:
        yield
    finally:
        limiter.release(token)
