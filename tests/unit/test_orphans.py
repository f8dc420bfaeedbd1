"""Hosts of dead workers (`fleet.orphans`) and a worker's liveness (`fleet.liveness`):
pure logic over a real SQLite store (whose claims name no process: holders are
``(worker, "")``); the Redis side is in tests/integration (test_store, test_dead_worker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.inventory.hosts import Host
from fleet.liveness import BEAT_S, Liveness
from fleet.orphans import settle_orphans
from fleet.results import HostResult, RunRecord, Status, utc_now
from fleet.rollout import BATCH_CLAIM
from fleet.store.sqlite_store import SqliteRunStore

NAMES = ("web01", "web02", "web03", "web04")
HOSTS = tuple(Host(n, f"10.0.0.{i + 1}") for i, n in enumerate(NAMES))
DEAD = {("w1@a", ""): time.time() + 1}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRunStore]:
    s = SqliteRunStore(tmp_path / "h.sqlite3")
    yield s
    s.close()


def make_run(
    store: SqliteRunStore,
    run_id: str = "r1",
    batches: tuple[tuple[str, ...], ...] = (),
    max_fail: int | None = None,
) -> RunRecord:
    run = RunRecord(
        run_id=run_id,
        command="uptime",
        pattern="web",
        hosts=NAMES,
        created_at=utc_now(),
        deadline=time.time() + 600,
        batches=batches,
        max_fail=max_fail,
    )
    store.create_run(run, HOSTS)
    return run


def started(store: SqliteRunStore, host: str, worker: str, run_id: str = "r1") -> None:
    assert store.start_host(run_id, host, worker, time.time()) == "started"


def ok(store: SqliteRunStore, host: str, run_id: str = "r1") -> None:
    store.save_result(run_id, HostResult(host, Status.OK, exit_code=0))


def settle(store: SqliteRunStore, dead: dict[tuple[str, str], float] = DEAD) -> list[object]:
    return list(settle_orphans(store, dead, sweeper="w2@b", dead_after_s=15))


def test_a_dead_workers_host_ends_lost_naming_it_and_the_run_finishes(
    store: SqliteRunStore,
) -> None:
    make_run(store)
    started(store, "web01", "w1@a")
    for name in NAMES[1:]:
        started(store, name, "w2@b")
        ok(store, name)
    (done,) = settle(store)
    lost = store.results("r1")["web01"]
    assert lost.status is Status.LOST and lost.worker == "w1@a"
    assert lost.error is not None and "its worker w1@a stopped" in lost.error
    assert lost.address == "10.0.0.1"
    assert done.lost == ("web01",) and done.resume is None  # type: ignore[attr-defined]
    assert store.get_run("r1").state == "finished"
    assert settle(store) == []  # finished: nothing more to do


def test_hosts_of_live_workers_and_unclaimed_hosts_are_left_alone(
    store: SqliteRunStore,
) -> None:
    make_run(store)
    started(store, "web01", "w2@b")  # alive
    started(store, "web02", "w1@a")  # dead
    assert settle(store) != []
    results = store.results("r1")
    assert set(results) == {"web02"}  # web01 runs on; web03, web04 wait for a worker
    assert store.get_run("r1").state == "running"
    assert settle(store, {}) == []  # nobody dead: nothing looked at
    # Dead before the run was created (a clock's margin aside): it holds none of its hosts.
    started(store, "web03", "w3@c")
    assert settle(store, {("w3@c", ""): time.time() - 3600}) == []
    assert "web03" not in store.results("r1")


def test_a_worker_that_comes_back_finds_its_result_refused(store: SqliteRunStore) -> None:
    make_run(store)
    started(store, "web01", "w1@a")
    settle(store)
    assert not store.save_result("r1", HostResult("web01", Status.OK, exit_code=0))
    assert store.results("r1")["web01"].status is Status.LOST


def test_a_rolling_runs_ended_batch_is_resumed_once(store: SqliteRunStore) -> None:
    make_run(store, batches=(NAMES[:2], NAMES[2:]))
    started(store, "web01", "w1@a")
    started(store, "web02", "w2@b")
    (first,) = settle(store)
    # web02 still runs: the batch has not ended, nothing to resume yet.
    assert first.lost == ("web01",) and first.resume is None  # type: ignore[attr-defined]
    ok(store, "web02")
    (second,) = settle(store)
    assert second.lost == () and second.resume == 0  # type: ignore[attr-defined]
    assert settle(store) == []  # resumed once, by one sweeper
    assert store.get_run("r1").state == "running"  # the resumed callback finishes it


def test_a_batch_already_followed_by_the_next_is_not_resumed(store: SqliteRunStore) -> None:
    make_run(store, batches=(NAMES[:2], NAMES[2:]))
    started(store, "web01", "w2@b")
    ok(store, "web01")
    started(store, "web02", "w2@b")
    ok(store, "web02")
    assert store.claim_host("r1", BATCH_CLAIM.format(1), "w2@b")  # batch 2 was sent
    started(store, "web03", "w1@a")
    started(store, "web04", "w2@b")
    ok(store, "web04")
    (done,) = settle(store)
    # The last batch ended with the lost host: nothing follows, the run finishes here.
    assert done.lost == ("web03",) and done.resume is None  # type: ignore[attr-defined]
    assert store.get_run("r1").state == "finished"


def test_a_cancelled_runs_dead_host_ends_lost_and_the_run_ends(store: SqliteRunStore) -> None:
    make_run(store)
    started(store, "web01", "w1@a")
    store.set_state("r1", "cancelled", expected="running")
    settle(store)
    statuses = {n: r.status for n, r in store.results("r1").items()}
    assert statuses == {
        "web01": Status.LOST,
        "web02": Status.CANCELLED,
        "web03": Status.CANCELLED,
        "web04": Status.CANCELLED,
    }
    assert store.get_run("r1").finished_at is not None


class FlakyStore:
    """`beat_alive` only: fails while `down`."""

    def __init__(self) -> None:
        self.down = False
        self.beats: list[tuple[str, float]] = []

    def beat_alive(self, worker: str, ttl_s: float) -> None:
        if self.down:
            raise ConnectionError("store down")
        self.beats.append((worker, ttl_s))


def test_a_worker_judges_only_after_a_full_ttl_of_its_own_beats() -> None:
    now = [100.0]
    flaky = FlakyStore()
    live = Liveness(flaky, "w1@a", ttl_s=15.0, clock=lambda: now[0])  # type: ignore[arg-type]

    def beating(seconds: float) -> None:
        for _ in range(int(seconds / 2)):
            now[0] += 2.0
            live.beat()

    live.beat()
    assert not live.judging()
    beating(14)
    assert not live.judging()
    beating(2)
    assert live.judging()
    assert flaky.beats[0] == ("w1@a", 15.0)
    flaky.down = True  # an outage: every worker's last beat grows old
    beating(2)
    assert not live.judging()
    flaky.down = False
    beating(14)  # back since the first of these beats: 12 s
    assert not live.judging()  # the others have not had their chance to beat yet
    beating(4)
    assert live.judging()
    # A gap in its own beats (the process stopped, the machine paused): the others may
    # have been stopped as long, so it neither judges now nor right after its next beat.
    now[0] += 30.0
    assert not live.judging()
    live.beat()
    assert not live.judging()
    beating(16)
    assert live.judging()


def test_beats_come_several_times_per_ttl_and_the_end_is_said() -> None:
    flaky = FlakyStore()
    assert Liveness(flaky, "w", ttl_s=60.0).beat_s == BEAT_S  # type: ignore[arg-type]
    live = Liveness(flaky, "w", ttl_s=2.0)  # type: ignore[arg-type]
    assert live.beat_s == 0.5
    live.start()
    live.stop()
    assert flaky.beats[-1] == ("w", 0.0)
