"""fleet.affinity's pure parts: rendezvous choice and routing (a stand-in store)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from fleet.affinity import (
    FRESH_S,
    TTL_S,
    Heartbeat,
    choose,
    personal_queue,
    routes,
    served_queues,
)
from fleet.errors import BackendError
from fleet.inventory.hosts import Host


class _Store:
    def __init__(self, live: dict[str, list[str]] | None = None, fail: bool = False) -> None:
        self.live = live or {}
        self.fail = fail
        self.asked: list[tuple[list[str], float]] = []

    def live_workers(self, queues: Sequence[str], min_left_s: float) -> dict[str, list[str]]:
        self.asked.append((list(queues), min_left_s))
        if self.fail:
            raise BackendError("run store at redis://x unreachable")
        return {q: self.live[q] for q in queues if q in self.live}


def _hosts(n: int, queue: str | None = None) -> list[Host]:
    return [Host(name=f"h{i:04d}", address="10.0.0.1", queue=queue) for i in range(n)]


def test_choice_is_stable_and_moves_only_the_gone_workers_hosts() -> None:
    three = [personal_queue(f"w{k}@n", "fleet") for k in range(3)]
    names = [f"h{i}" for i in range(600)]
    before = {n: choose(n, three) for n in names}
    assert before == {n: choose(n, list(reversed(three))) for n in names}
    # Spread: each worker gets a fair share.
    assert all(100 < list(before.values()).count(w) < 300 for w in three)
    after = {n: choose(n, three[:2]) for n in names}
    moved = [n for n in names if before[n] != after[n]]
    assert moved and all(before[n] == three[2] for n in moved)


def test_routes_only_where_two_or_more_workers_serve_the_queue() -> None:
    store = _Store({"fleet": ["fleet.w.a@n", "fleet.w.b@n"], "dc2": ["fleet.w.c@n"]})
    hosts = _hosts(20) + _hosts(5, queue="dc2")
    got = routes(store, hosts, embedded=False, enabled=True)  # type: ignore[arg-type]
    assert set(got) == {h.name for h in hosts[:20]}
    assert set(got.values()) == {"fleet.w.a@n", "fleet.w.b@n"}
    assert store.asked == [(["dc2", "fleet"], TTL_S - FRESH_S)]


def test_no_routes_embedded_or_when_the_store_cannot_say() -> None:
    hosts = _hosts(4)
    live = {"fleet": ["fleet.w.a@n", "fleet.w.b@n"]}
    assert routes(_Store(live), hosts, embedded=True, enabled=True) == {}  # type: ignore[arg-type]
    # Off unless asked (FLEET_HOST_AFFINITY): no host waits behind a busy worker.
    assert routes(_Store(live), hosts, embedded=False, enabled=False) == {}  # type: ignore[arg-type]
    assert routes(_Store(live, fail=True), hosts, embedded=False, enabled=True) == {}  # type: ignore[arg-type]


def test_served_queues_leave_out_personal_ones() -> None:
    assert served_queues({"fleet": 1, "dc1": 1, "fleet.w.a@n": 1}) == ["dc1", "fleet"]


class _Registrations:
    """A stand-in store recording what a `Heartbeat` registers and retires."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def register_worker(self, personals: Mapping[str, str], ttl_s: float) -> None:
        self.calls.append("register")

    def retire_worker(self, personals: Mapping[str, str]) -> None:
        self.calls.append("retire")

    def expired_workers(self, queues: Sequence[str], drop_after_s: float) -> dict[str, list[str]]:
        return {}


def test_a_stopping_worker_expires_its_registration_last() -> None:
    # Expired, not dropped: the other workers then move what waits in its queue; and
    # after its last beat, or that beat would make it live again.
    store = _Registrations()
    beat = Heartbeat(store, app=None, personals={"fleet": personal_queue("w@n", "fleet")})  # type: ignore[arg-type]
    beat.start()
    beat.leave()
    beat.stop()
    assert store.calls[0] == "register"
    assert store.calls[-1] == "retire"
    assert store.calls.count("retire") == 1


def test_a_worker_whose_heartbeat_never_ran_still_retires() -> None:
    store = _Registrations()
    beat = Heartbeat(store, app=None, personals={"fleet": personal_queue("w@n", "fleet")})  # type: ignore[arg-type]
    beat.stop()
    assert store.calls == ["retire"]


def test_no_beat_after_the_worker_began_to_leave() -> None:
    # A beat still under way when the shutdown began must not register it again.
    store = _Registrations()
    beat = Heartbeat(store, app=None, personals={"fleet": personal_queue("w@n", "fleet")})  # type: ignore[arg-type]
    beat.leave()
    beat._beat()
    beat.stop()
    assert store.calls == ["retire"]


class _SlowRegistrations(_Registrations):
    """A store whose registering waits until `go` is set (a beat still under way)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = threading.Event()
        self.go = threading.Event()

    def register_worker(self, personals: Mapping[str, str], ttl_s: float) -> None:
        self.inside.set()
        self.go.wait(10)
        super().register_worker(personals, ttl_s)


def test_a_beat_under_way_lands_before_the_retiring_not_after() -> None:
    # Without the lock the retiring would go first, and the late beat would make the
    # stopped worker live again for TTL_S (hosts routed to a queue nobody consumes).
    store = _SlowRegistrations()
    beat = Heartbeat(store, app=None, personals={"fleet": personal_queue("w@n", "fleet")})  # type: ignore[arg-type]
    in_flight = threading.Thread(target=beat._beat)
    in_flight.start()
    assert store.inside.wait(10)
    threading.Timer(0.2, store.go.set).start()
    beat.stop(timeout_s=0.0)
    in_flight.join(10)
    assert store.calls == ["register", "retire"]
