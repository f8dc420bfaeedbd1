"""The handshake limit's logic (fleet.ssh.handshakes) and how the pool uses it, with an
in-memory slot table and a scripted connector (no network). The shared tables in
Redis and SQLite, a killed holder and real sshd are in
tests/integration/test_handshake_limit.py."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from fleet.command import ExecOptions
from fleet.errors import BackendError
from fleet.results import Status
from fleet.ssh.errors import ConnectFailure
from fleet.ssh.handshakes import (
    HandshakeToken,
    NoSlot,
    SharedLimiter,
    endpoint_of,
    handshake_slot,
    shared_limiter,
    slot_hold_s,
    slot_wait_s,
)
from fleet.ssh.pool import ConnectionPool
from fleet.ssh.sshconfig import Target


class MemorySlots:
    """The shared table's rule in memory: `limit` holders per endpoint, each until a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[str, dict[str, float]] = {}
        self.down = False
        self.takes = 0

    def take_slot(self, endpoint: str, holder: str, limit: int, hold_s: float) -> bool:
        if self.down:
            raise BackendError("run store at redis://x unreachable")
        with self.lock:
            self.takes += 1
            now = time.monotonic()
            slots = self.held.setdefault(endpoint, {})
            for name in [n for n, until in slots.items() if until <= now]:
                del slots[name]
            if holder in slots:
                return True
            if len(slots) >= limit:
                return False
            slots[holder] = now + hold_s
            return True

    def release_slot(self, endpoint: str, holder: str, linger_s: float = 0.0) -> None:
        if self.down:
            raise BackendError("run store at redis://x unreachable")
        with self.lock:
            slots = self.held.get(endpoint, {})
            if linger_s > 0 and holder in slots:
                slots[holder] = time.monotonic() + linger_s
            else:
                slots.pop(holder, None)


def busy_run(limiters: list[SharedLimiter], threads: int, endpoint: str = "a:22") -> int:
    """`threads` handshakes of 20 ms spread over `limiters` (processes); the most at once."""
    lock = threading.Lock()
    now = [0]
    peak = [0]

    def one(i: int) -> None:
        token = limiters[i % len(limiters)].acquire(endpoint, hold_s=30, wait_s=30)
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1
        limiters[i % len(limiters)].release(token)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(threads)))
    return peak[0]


def test_at_most_limit_in_progress_across_processes() -> None:
    slots = MemorySlots()
    two = [SharedLimiter(slots, 3, linger_s=0), SharedLimiter(slots, 3, linger_s=0)]
    assert busy_run(two, 24) == 3
    assert slots.held["handshake:a:22"] == {}  # every slot given back


def test_a_released_slot_lingers_while_sshd_counts_the_login() -> None:
    slots = MemorySlots()
    limiter = SharedLimiter(slots, 1, linger_s=0.3)
    limiter.release(limiter.acquire("a:22", hold_s=30, wait_s=1))
    with pytest.raises(NoSlot):  # not yet: sshd may still count the last one
        limiter.acquire("a:22", hold_s=30, wait_s=0.1)
    started = time.monotonic()
    limiter.release(limiter.acquire("a:22", hold_s=30, wait_s=2))
    assert time.monotonic() - started < 1.0


def test_endpoints_are_counted_apart() -> None:
    slots = MemorySlots()
    limiter = SharedLimiter(slots, 1)
    first = limiter.acquire("10.0.0.1:22", hold_s=30, wait_s=1)
    # The same address on another port is another sshd: not held up by the first.
    other = limiter.acquire("10.0.0.1:2222", hold_s=30, wait_s=0.05)
    with pytest.raises(NoSlot):
        limiter.acquire("10.0.0.1:22", hold_s=30, wait_s=0.05)
    limiter.release(first)
    limiter.release(other)


def test_no_slot_within_the_wait_raises_after_about_the_wait() -> None:
    slots = MemorySlots()
    elsewhere = SharedLimiter(slots, 2)  # another worker holds both slots
    held = [elsewhere.acquire("b:22", hold_s=30, wait_s=1) for _ in range(2)]
    mine = SharedLimiter(slots, 2)
    started = time.monotonic()
    with pytest.raises(NoSlot) as caught:
        mine.acquire("b:22", hold_s=30, wait_s=0.3)
    assert 0.25 <= time.monotonic() - started < 2.0
    assert caught.value.endpoint == "b:22" and caught.value.waited_s == 0.3
    assert mine.in_progress("b:22") == 0  # the failed waiter left the local gate
    for token in held:
        elsewhere.release(token)


def test_a_holder_that_never_releases_loses_its_slot_after_the_hold_time() -> None:
    slots = MemorySlots()
    dead = SharedLimiter(slots, 1)
    dead.acquire("c:22", hold_s=0.2, wait_s=1)  # its process is killed: never released
    alive = SharedLimiter(slots, 1)
    started = time.monotonic()
    token = alive.acquire("c:22", hold_s=30, wait_s=5)
    assert 0.15 <= time.monotonic() - started < 2.0
    alive.release(token)


def test_a_local_release_wakes_a_waiter_at_once() -> None:
    slots = MemorySlots()
    # Long pauses between asks: only the wake-up from a release can make it quick.
    limiter = SharedLimiter(
        slots, 1, first_retry_s=5.0, max_retry_s=5.0, rng=lambda: 0.5, linger_s=0
    )
    held = limiter.acquire("d:22", hold_s=30, wait_s=1)
    got: list[float] = []

    def wait() -> None:
        token = limiter.acquire("d:22", hold_s=30, wait_s=10)
        got.append(time.monotonic())
        limiter.release(token)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    released = time.monotonic()
    limiter.release(held)
    waiter.join(5)
    assert got and got[0] - released < 1.0


def test_pauses_between_asks_are_jittered_and_grow() -> None:
    slots = MemorySlots()
    SharedLimiter(slots, 1).acquire("e:22", hold_s=30, wait_s=1)
    draws = iter([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0] * 10)
    mine = SharedLimiter(slots, 1, first_retry_s=0.01, max_retry_s=0.04, rng=lambda: next(draws))
    slots.takes = 0
    with pytest.raises(NoSlot):
        mine.acquire("e:22", hold_s=30, wait_s=0.25)
    # Pauses of 0.005, 0.03, 0.02, 0.06, 0.02, 0.06 ... s: a handful of asks, not hundreds.
    assert 4 <= slots.takes <= 15


def test_only_limit_threads_of_a_process_ask_the_shared_table() -> None:
    slots = MemorySlots()
    SharedLimiter(slots, 2).acquire("f:22", hold_s=30, wait_s=1)  # elsewhere
    SharedLimiter(slots, 2).acquire("f:22", hold_s=30, wait_s=1)
    mine = SharedLimiter(slots, 2, first_retry_s=0.05, max_retry_s=0.05)
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(mine.acquire, "f:22", hold_s=30, wait_s=0.5) for _ in range(20)]
        time.sleep(0.2)
        assert mine.in_progress("f:22") == 2  # 18 wait in the process, not in Redis
        for future in futures:
            with pytest.raises(NoSlot):
                future.result()


def test_a_store_outage_limits_within_the_process_and_never_fails_a_host() -> None:
    slots = MemorySlots()
    slots.down = True
    limiter = SharedLimiter(slots, 2)
    token = limiter.acquire("g:22", hold_s=30, wait_s=1)
    assert token == HandshakeToken("g:22", token.holder, shared=False)
    second = limiter.acquire("g:22", hold_s=30, wait_s=1)
    with pytest.raises(NoSlot):
        limiter.acquire("g:22", hold_s=30, wait_s=0.05)  # still 2 per process
    limiter.release(token)  # a release that cannot reach the store does not raise
    limiter.release(second)
    assert limiter.in_progress("g:22") == 0


def test_zero_means_no_limit() -> None:
    assert shared_limiter(MemorySlots(), 0) is None
    limiter = shared_limiter(MemorySlots(), 8)
    assert limiter is not None and limiter.limit == 8
    with pytest.raises(ValueError, match="at least 1"):
        SharedLimiter(MemorySlots(), 0)


def test_endpoint_is_address_and_port_as_written() -> None:
    assert endpoint_of(Target("w", "10.0.0.5", 22, "u")) == "10.0.0.5:22"
    assert endpoint_of(Target("w", "10.0.0.5", 2222, "u")) == "10.0.0.5:2222"
    assert endpoint_of(Target("w", "bastion.example", 22, "u")) == "bastion.example:22"
    assert endpoint_of(Target("w", "fe80::1", 22, "u")) == "[fe80::1]:22"


def test_hold_outlasts_a_handshake_and_wait_is_the_hosts_budget() -> None:
    options = ExecOptions(connect_timeout=10, auth_timeout=10, command_timeout=300)
    assert slot_hold_s(options) == 2 * 10 + 10 + 5
    assert slot_wait_s(options) == 10 + 10 + 300  # not the connect timeout alone


def test_no_slot_is_an_unreachable_host_saying_why() -> None:
    slots = MemorySlots()
    limiter = SharedLimiter(slots, 1)
    limiter.acquire("10.0.0.9:22", hold_s=30, wait_s=1)
    options = ExecOptions(connect_timeout=0.1, auth_timeout=0.1, command_timeout=0.1)
    target = Target("w", "10.0.0.9", 22, "u")
    with pytest.raises(ConnectFailure) as caught, handshake_slot(limiter, target, options):
        raise AssertionError("must not get a slot")
    assert caught.value.status is Status.UNREACHABLE
    assert "not contacted: no handshake slot for 10.0.0.9:22" in caught.value.message
    assert "FLEET_HANDSHAKES_PER_TARGET" in caught.value.message


def test_a_maxstartups_drop_is_named() -> None:
    from fleet.ssh.banner import BannerWatch, banner_failure

    class Dropped:
        def recv(self, size: int) -> bytes:
            return b"Exceeded MaxStartups\r\n"

    watch = BannerWatch(Dropped())
    watch.recv(64)
    failure = banner_failure(watch, "10.0.0.1:22", 10.0, "10 s")
    assert failure.status is Status.UNREACHABLE
    assert "10.0.0.1:22 refused the connection: too many unauthenticated" in failure.message
    assert "MaxStartups" in failure.message


# --- the pool: which connections take a slot, and when ---------------------------


class FakeTransport:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.active = True

    def is_active(self) -> bool:
        return self.active

    def close(self) -> None:
        self.active = False

    def open_channel(self, *args: Any, **kwargs: Any) -> object:
        return object()  # a jump host's tunnel


class FakeConnector:
    """Handshakes take `delay` seconds; records how many run at once per endpoint."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.handshakes: Counter[str] = Counter()

    def open_socket(self, target: Target, options: ExecOptions) -> object:
        return object()

    def connect(self, target: Target, sock: object, options: ExecOptions) -> FakeTransport:
        where = endpoint_of(target)
        with self.lock:
            self.now[where] += 1
            self.handshakes[where] += 1
            self.peak[where] = max(self.peak[where], self.now[where])
        time.sleep(self.delay)
        with self.lock:
            self.now[where] -= 1
        return FakeTransport(target)


class RecordingLimiter(SharedLimiter):
    def __init__(self, slots: MemorySlots, limit: int) -> None:
        super().__init__(slots, limit)
        self.events: list[tuple[str, str]] = []

    def acquire(self, endpoint: str, *, hold_s: float, wait_s: float) -> HandshakeToken:
        token = super().acquire(endpoint, hold_s=hold_s, wait_s=wait_s)
        self.events.append(("take", endpoint))
        return token

    def release(self, token: HandshakeToken) -> None:
        self.events.append(("give", token.endpoint))
        super().release(token)


OPTIONS = ExecOptions(connect_timeout=5, auth_timeout=5, command_timeout=10)


def make_pools(limit: int, processes: int = 2) -> tuple[list[ConnectionPool], FakeConnector]:
    slots = MemorySlots()
    connector = FakeConnector()
    pools = [
        ConnectionPool(
            cast(Any, connector), limiter=shared_limiter(slots, limit) if limit else None
        )
        for _ in range(processes)
    ]
    return pools, connector


def lease_all(pools: list[ConnectionPool], targets: list[Target]) -> None:
    def one(i: int) -> None:
        pool = pools[i % len(pools)]
        pool.release(pool.acquire(targets[i], OPTIONS))

    with ThreadPoolExecutor(32) as executor:
        list(executor.map(one, range(len(targets))))


def test_hosts_sharing_an_address_and_port_share_its_limit() -> None:
    # 30 hosts on one sshd (other users: no transport to share), two worker processes.
    pools, connector = make_pools(limit=4)
    targets = [Target(f"h{i}", "10.0.0.1", 22, f"user{i}") for i in range(30)]
    lease_all(pools, targets)
    assert connector.handshakes["10.0.0.1:22"] == 30
    assert connector.peak["10.0.0.1:22"] <= 4


def test_without_a_limit_they_all_handshake_at_once() -> None:
    pools, connector = make_pools(limit=0)
    lease_all(pools, [Target(f"h{i}", "10.0.0.1", 22, f"user{i}") for i in range(30)])
    assert connector.peak["10.0.0.1:22"] > 4


def test_ports_of_one_address_are_limited_apart() -> None:
    pools, connector = make_pools(limit=2)
    targets = [Target(f"h{i}", "10.0.0.1", 2200 + i % 3, f"u{i}") for i in range(30)]
    lease_all(pools, targets)
    assert all(connector.peak[f"10.0.0.1:{2200 + p}"] <= 2 for p in range(3))


def test_a_pooled_transport_takes_no_slot() -> None:
    slots = MemorySlots()
    limiter = RecordingLimiter(slots, 2)
    pool = ConnectionPool(cast(Any, FakeConnector(0)), limiter=limiter)
    target = Target("w", "10.0.0.2", 22, "u")
    for _ in range(3):
        pool.release(pool.acquire(target, OPTIONS))
    assert limiter.events == [("take", "10.0.0.2:22"), ("give", "10.0.0.2:22")]


def test_through_a_jump_host_no_slot_is_held_while_waiting_for_another() -> None:
    slots = MemorySlots()
    limiter = RecordingLimiter(slots, 2)
    connector = FakeConnector(0)
    pool = ConnectionPool(cast(Any, connector), limiter=limiter)
    jump = Target("j", "10.9.9.9", 22, "u")
    targets = [Target(f"t{i}", f"10.1.0.{i}", 22, "u", jump=jump) for i in range(3)]
    for target in targets:
        pool.release(pool.acquire(target, OPTIONS))
    # The jump host's handshake, once (then its transport is pooled), before any
    # target's slot is taken; each target's handshake counts against its own sshd.
    assert limiter.events[:2] == [("take", "10.9.9.9:22"), ("give", "10.9.9.9:22")]
    assert limiter.events[2:] == [
        e for i in range(3) for e in (("take", f"10.1.0.{i}:22"), ("give", f"10.1.0.{i}:22"))
    ]
    assert connector.handshakes["10.9.9.9:22"] == 1


def test_a_pool_with_no_limiter_is_unchanged() -> None:
    connector = FakeConnector(0)
    pool = ConnectionPool(cast(Any, connector))
    assert pool.limiter is None
    pool.release(pool.acquire(Target("w", "10.0.0.3", 22, "u"), OPTIONS))
    assert connector.handshakes["10.0.0.3:22"] == 1


def test_the_default_pool_takes_the_configured_limiter() -> None:
    from fleet import ssh

    limiter = SharedLimiter(MemorySlots(), 3)
    ssh.close_default_pool()
    try:
        ssh.configure_handshake_limiter(limiter)
        assert ssh.default_pool().limiter is limiter
        ssh.configure_handshake_limiter(None)
        assert ssh.default_pool().limiter is None
    finally:
        ssh.configure_handshake_limiter(None)
        ssh.close_default_pool()
