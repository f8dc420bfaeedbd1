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
from fleet.orphans import Orphaned, settle_orphans
from fleet.results import HostResult, RunRecord, Status, utc_now
from fleet.rollout import BATCH_CLAIM
from fleet.store.sqlite_store import SqliteRunStore
from fleet.watchdog import Watchdog

NAMES = ("web01", "web02", "web03", "web04")
HOSTS = tuple(Host(n, f"10.0.0.{i + 1}") for i, n in enumerate(NAMES))
DEAD_WORKER = ("w1@a", "")


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


class Resumer:
    """A `resume` callback recording its calls; raises while `failing`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.failing = False

    def __call__(self, run_id: str, batch: int, deadline: float) -> None:
        if self.failing:
            raise ConnectionError("broker down")
        self.calls.append((run_id, batch))


def settle(
    store: SqliteRunStore,
    dead: dict[tuple[str, str], float] | None = None,
    resume: Resumer | None = None,
    sweeper: str = "w2@b",
) -> list[Orphaned]:
    # Dead now, after the runs were created (a sweep skips runs created after a death).
    dead = {DEAD_WORKER: time.time() + 1} if dead is None else dead
    return settle_orphans(store, dead, sweeper=sweeper, resume=resume, hold_s=30)


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
    assert "counted dead at" in lost.error
    assert lost.address == "10.0.0.1"
    assert done.lost == ("web01",) and done.resumed is None
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


def test_a_rolling_runs_ended_batch_is_resumed_by_one_sweeper(store: SqliteRunStore) -> None:
    make_run(store, batches=(NAMES[:2], NAMES[2:]))
    started(store, "web01", "w1@a")
    started(store, "web02", "w2@b")
    resume = Resumer()
    (first,) = settle(store, resume=resume)
    # web02 still runs: the batch has not ended, nothing to resume yet.
    assert first.lost == ("web01",) and first.resumed is None and resume.calls == []
    ok(store, "web02")
    (second,) = settle(store, resume=resume)
    assert second.lost == () and second.resumed == 0 and resume.calls == [("r1", 0)]
    assert settle(store, resume=resume, sweeper="w3@c") == []  # another sweeper: held
    assert store.get_run("r1").state == "running"  # the resumed callback goes on with it


def test_a_resume_that_failed_to_send_is_tried_again(store: SqliteRunStore) -> None:
    make_run(store, "r0")  # an earlier run: the failure of r1's sending stops nothing
    make_run(store, batches=(NAMES[:2], NAMES[2:]))
    started(store, "web01", "w1@a")
    started(store, "web01", "w1@a", run_id="r0")
    started(store, "web02", "w2@b")
    ok(store, "web02")
    resume = Resumer()
    resume.failing = True
    done = settle(store, resume=resume)
    # r1's sending failed (logged): its lost host is said all the same, r0 goes on.
    assert [(d.run_id, d.lost, d.resumed) for d in done] == [
        ("r1", ("web01",), None),
        ("r0", ("web01",), None),
    ]
    resume.failing = False
    (again,) = settle(store, resume=resume)
    assert again.run_id == "r1" and again.resumed == 0 and resume.calls == [("r1", 0)]


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
    (done,) = settle(store, resume=Resumer())
    # The last batch ended with the lost host: nothing follows, the run finishes here.
    assert done.lost == ("web03",) and done.resumed is None
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
        self.store_time = [1000.0]

    def beat_alive(self, worker: str, ttl_s: float) -> float:
        if self.down:
            raise ConnectionError("store down")
        self.beats.append((worker, ttl_s))
        return self.store_time[0]

    def forget_alive(self, worker: str) -> None:
        self.beats.append((worker, -1.0))


def test_a_worker_judges_only_after_a_full_ttl_of_its_own_beats() -> None:
    now = [100.0]
    flaky = FlakyStore()
    live = Liveness(flaky, "w1@a", ttl_s=15.0, clock=lambda: now[0])  # type: ignore[arg-type]

    def beating(seconds: float) -> None:
        for _ in range(int(seconds / 2)):
            now[0] += 2.0
            flaky.store_time[0] += 2.0
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
    # The store's clock steps ahead (a failover to a replica, a restart from a snapshot):
    # every worker's time alive looks spent at once, so again it waits.
    flaky.store_time[0] += 60.0
    live.beat()
    assert not live.judging()
    beating(16)
    assert live.judging()
    live.leave()  # its shutdown began
    assert not live.judging()


def test_beats_come_several_times_per_ttl_and_the_end_is_said() -> None:
    flaky = FlakyStore()
    assert Liveness(flaky, "w", ttl_s=60.0).beat_s == BEAT_S  # type: ignore[arg-type]
    live = Liveness(flaky, "w", ttl_s=2.0)  # type: ignore[arg-type]
    assert live.beat_s == 0.5
    live.start()
    live.stop()
    assert flaky.beats[-1] == ("w", -1.0)  # forgotten: it ended holding no host
    cold = Liveness(flaky, "c", ttl_s=2.0)  # type: ignore[arg-type]
    cold.start()
    cold.stop(forget=False)  # a cold shutdown: its hosts are found orphaned
    assert ("c", -1.0) not in flaky.beats


def test_a_death_counts_once_seen_twice_two_beats_apart(
    store: SqliteRunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog acts on a process found dead at two sweeps, at least two beats apart,
    with the same time alive; one that beat in between (it only seemed dead: a clock
    step, a restart of the store) is a suspect again from scratch."""
    import fleet.watchdog

    now = [50.0]
    monkeypatch.setattr(fleet.watchdog.time, "monotonic", lambda: now[0])
    dog = Watchdog(store, interval_s=10)
    a, b = ("w1@a", "p1"), ("w2@b", "p2")
    assert dog._confirmed({a: 100.0, b: 100.0}, beat_s=2) == {}
    now[0] += 3.0
    assert dog._confirmed({a: 100.0, b: 100.0}, beat_s=2) == {}  # 3 s < 2 beats
    now[0] += 2.0
    assert dog._confirmed({a: 100.0, b: 107.0}, beat_s=2) == {a: 100.0}  # b beat since
    now[0] += 4.0
    assert dog._confirmed({a: 100.0, b: 107.0}, beat_s=2) == {a: 100.0, b: 107.0}
    assert dog._confirmed({}, beat_s=2) == {}
