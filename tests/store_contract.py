"""Behaviour every run store must show, shared by the SQLite and Redis test modules.

A test module subclasses `StoreContract` as ``TestSomething`` and provides the
fixture ``make_store``: a factory ``make_store(retention=...) -> RunStore`` giving a
fresh, empty store each call (closed by the fixture at teardown).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from fleet.errors import RunNotFoundError
from fleet.inventory.hosts import Host
from fleet.results import HostResult, RunRecord, RunReport, Status, utc_now
from fleet.store.protocol import FINALIZER, PROCESS_ID, BeatState, RunStore

MakeStore = Callable[..., RunStore]

COLON_HOST = "db:1/a[2].example.com"


def make_hosts(*names: str) -> tuple[Host, ...]:
    return tuple(
        Host(
            name=n,
            address=f"10.0.0.{i + 1}",
            port=2200 + i,
            user="deploy",
            env={"A": "1"},
            vars={"rack": i, "tags": ["x", "y"]},
            groups=("web", "prod"),
        )
        for i, n in enumerate(names)
    )


def make_run(
    run_id: str,
    hosts: tuple[Host, ...],
    *,
    deadline_in: float = 600.0,
    created_at: str | None = None,
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        command="uptime",
        pattern="web",
        hosts=tuple(h.name for h in hosts),
        created_at=created_at or utc_now(),
        deadline=time.time() + deadline_in,
        user="ops@box",
        options={"timeout": 30, "sudo": False},
    )


def ok(host: str, stdout: str = "up\n") -> HostResult:
    return HostResult(host=host, status=Status.OK, exit_code=0, stdout=stdout, worker="w1")


class StoreContract:
    @pytest.fixture
    def store(self, make_store: MakeStore) -> RunStore:
        return make_store()

    @pytest.fixture
    def started(self, store: RunStore) -> tuple[RunStore, RunRecord]:
        hosts = make_hosts("web01", COLON_HOST)
        run = make_run("r1", hosts)
        store.create_run(run, hosts)
        return store, run

    def test_ping(self, store: RunStore) -> None:
        store.ping()

    def test_run_record_and_hosts_round_trip(self, store: RunStore) -> None:
        hosts = make_hosts("web01", "web02", COLON_HOST)
        run = make_run("20260101-000000-abcdef", hosts)
        store.create_run(run, hosts)
        assert store.get_run(run.run_id) == run
        # Free vars are not stored: a task needs none of them (issue 10 point 6).
        assert store.run_hosts(run.run_id) == tuple(replace(h, vars={}) for h in hosts)

    def test_unknown_run_is_not_found_and_says_expired(self, store: RunStore) -> None:
        with pytest.raises(RunNotFoundError, match="expired") as info:
            store.get_run("nope")
        assert "'nope'" in str(info.value)
        assert store.run_hosts("nope") == ()
        assert store.results("nope") == {}
        assert store.events("nope") == []
        assert store.load_report("nope") is None
        assert not store.is_live("nope")
        assert not store.set_state("nope", "finished")

    def test_claim_only_first_claimer_wins(self, started: tuple[RunStore, RunRecord]) -> None:
        store, run = started
        assert store.claim_host(run.run_id, COLON_HOST, "w1")
        assert not store.claim_host(run.run_id, COLON_HOST, "w2")
        assert not store.claim_host(run.run_id, COLON_HOST, "w1")
        # The colon host's claim does not shadow a host whose name is a prefix of it.
        assert store.claim_host(run.run_id, "db", "w1")
        assert store.claim_host(run.run_id, "web01", "w1")  # still free: nothing shadowed it

    def test_start_host_claims_checks_and_announces_in_one_step(
        self, started: tuple[RunStore, RunRecord]
    ) -> None:
        store, run = started
        now = time.time()
        assert store.start_host(run.run_id, COLON_HOST, "w1", now) == "started"
        assert store.start_host(run.run_id, COLON_HOST, "w2", now) == "taken"
        assert not store.claim_host(run.run_id, COLON_HOST, "w3")
        events = [e for _, e in store.events(run.run_id) if e.get("type") == "started"]
        assert events == [{"type": "started", "host": COLON_HOST, "worker": "w1"}]
        # Past the deadline (or once not running): claimed, so no one else runs it, but
        # not started.
        assert store.start_host(run.run_id, "web01", "w1", run.deadline + 1) == "not_live"
        assert not store.claim_host(run.run_id, "web01", "w2")
        assert store.start_host("nope", "web01", "w1", now) == "not_live"

    def test_a_host_the_runs_end_claimed_reads_closed_to_a_late_start(
        self, started: tuple[RunStore, RunRecord]
    ) -> None:
        store, run = started
        assert store.claim_host(run.run_id, COLON_HOST, FINALIZER)
        assert store.claim_holder(run.run_id, COLON_HOST) == FINALIZER
        assert store.start_host(run.run_id, COLON_HOST, "w1", time.time()) == "closed"
        assert store.claim_holder(run.run_id, COLON_HOST) == FINALIZER  # unchanged
        assert store.claim_holder(run.run_id, "web01") is None
        assert not [e for _, e in store.events(run.run_id) if e.get("type") == "started"]

    def test_claim_holders_name_the_worker_of_each_claimed_host(
        self, started: tuple[RunStore, RunRecord]
    ) -> None:
        store, run = started
        assert store.start_host(run.run_id, "web01", "w1@a", time.time()) == "started"
        holders = store.claim_holders(run.run_id, ["web01", COLON_HOST])
        assert list(holders) == ["web01"]  # the other host is not claimed
        worker, process = holders["web01"]
        assert worker == "w1@a"
        # The process that claimed it: this one where the store keeps it (Redis).
        assert process in ("", PROCESS_ID)
        assert store.claim_holders(run.run_id, []) == {}
        # And its OS pid (a prefork pool process's own), where the store keeps it.
        pids = store.claim_pids(run.run_id, ["web01", COLON_HOST])
        assert pids in ({}, {"web01": os.getpid()}) and (pids == {}) == (process == "")
        assert store.claim_holders(run.run_id, []) == {} == store.claim_pids(run.run_id, [])
        store.claim_host(run.run_id, COLON_HOST, "w2@b")  # a claim that is no host's start
        assert COLON_HOST not in store.claim_pids(run.run_id, [COLON_HOST])

    def test_claims_race_between_threads(self, started: tuple[RunStore, RunRecord]) -> None:
        store, run = started
        wins: list[bool] = []
        barrier = threading.Barrier(8)

        def claim(n: int) -> None:
            barrier.wait()
            wins.append(store.claim_host(run.run_id, "web01", f"w{n}"))

        threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(wins) == [False] * 7 + [True]

    def test_beat_slots_are_claimed_once_and_state_is_shared(self, store: RunStore) -> None:
        assert store.beat_state("disk") == BeatState()
        assert store.claim_slot("disk", 1_800_000_000, 600)
        assert not store.claim_slot("disk", 1_800_000_000, 600)  # a second beat process
        assert store.claim_slot("disk", 1_800_000_060, 600)
        assert store.claim_slot("other", 1_800_000_000, 600)  # slots are per schedule
        store.record_firing("disk", 1_800_000_060, "20261130-090000-abcdef")
        assert store.count_skip("disk") == 1 and store.count_skip("disk") == 2
        assert store.beat_state("disk") == BeatState(1_800_000_060, "20261130-090000-abcdef", 2)
        assert store.beat_state("other") == BeatState()

    def test_is_live(self, store: RunStore) -> None:
        hosts = make_hosts("web01")
        run = make_run("live", hosts, deadline_in=60)
        store.create_run(run, hosts)
        assert store.is_live("live")
        assert not store.is_live("live", now=run.deadline + 1)
        assert store.set_state("live", "cancelled")
        assert not store.is_live("live")

    def test_set_state_is_compare_and_set(self, started: tuple[RunStore, RunRecord]) -> None:
        store, run = started
        assert not store.set_state(run.run_id, "finished", expected="cancelled")
        assert store.get_run(run.run_id).state == "running"
        done = utc_now()
        assert store.set_state(run.run_id, "finished", finished_at=done)
        assert not store.set_state(run.run_id, "cancelled")  # no longer running
        got = store.get_run(run.run_id)
        assert (got.state, got.finished_at) == ("finished", done)
        # Without finished_at the stored one is kept.
        assert store.set_state(run.run_id, "finished", expected="finished")
        assert store.get_run(run.run_id).finished_at == done

    def test_save_result_first_write_wins(self, started: tuple[RunStore, RunRecord]) -> None:
        store, run = started
        first = ok(COLON_HOST, "first\n")
        assert store.save_result(run.run_id, first)
        lost = HostResult.not_run(COLON_HOST, Status.LOST, "no result by the deadline")
        assert not store.save_result(run.run_id, lost)
        # The very same result again: the call resent after its reply was lost.
        assert store.save_result(run.run_id, first)
        assert store.results(run.run_id) == {COLON_HOST: first}
        events = [e for _, e in store.events(run.run_id)]
        assert events == [{"type": "result", "host": COLON_HOST, "status": "ok"}]

    def test_results_keep_every_field(self, started: tuple[RunStore, RunRecord]) -> None:
        store, run = started
        full = HostResult(
            host="web01",
            status=Status.TIMEOUT,
            address="10.0.0.1",
            exit_code=None,
            stdout="partial ✓\n",
            stderr="err",
            stdout_truncated=True,
            stdout_bytes=5_000_000,
            started_at=utc_now(),
            finished_at=utc_now(),
            duration_s=2.5,
            error="command ran past 2s",
            worker="w2@node",
            connection_reused=True,
            remote_kill_confirmed=False,
        )
        store.save_result(run.run_id, full)
        assert store.results(run.run_id)["web01"] == full

    def test_events_are_resumable(self, started: tuple[RunStore, RunRecord]) -> None:
        store, run = started
        ids = [store.add_event(run.run_id, {"type": "started", "host": f"h{i}"}) for i in range(5)]
        assert len(set(ids)) == 5
        everything = store.events(run.run_id)
        assert [i for i, _ in everything] == ids
        assert everything[0][1] == {"type": "started", "host": "h0"}
        assert [i for i, _ in store.events(run.run_id, after=ids[2])] == ids[3:]
        assert store.events(run.run_id, after=ids[-1]) == []
        assert [i for i, _ in store.events(run.run_id, count=2)] == ids[:2]

    def test_events_block_until_one_arrives(self, started: tuple[RunStore, RunRecord]) -> None:
        store, run = started
        last = store.add_event(run.run_id, {"type": "started", "host": "web01"})
        t0 = time.monotonic()
        assert store.events(run.run_id, after=last, block_ms=300) == []
        assert time.monotonic() - t0 >= 0.25
        timer = threading.Timer(0.2, store.add_event, (run.run_id, {"type": "finished"}))
        timer.start()
        try:
            t0 = time.monotonic()
            got = store.events(run.run_id, after=last, block_ms=3000)
        finally:
            timer.join()
        assert [e for _, e in got] == [{"type": "finished"}]
        assert time.monotonic() - t0 < 2.0

    def test_report_round_trip(self, started: tuple[RunStore, RunRecord]) -> None:
        store, run = started
        assert store.load_report(run.run_id) is None
        results = [ok("web01"), ok(COLON_HOST)]
        for result in results:
            store.save_result(run.run_id, result)
        report = RunReport.assemble(run, results)
        store.save_report(report)
        # One copy of each result: the report is assembled from the stored results.
        assert store.load_report(run.run_id) == report

    def test_list_runs_newest_first_with_host_filter(self, store: RunStore) -> None:
        web, db = make_hosts("web01"), make_hosts(COLON_HOST)
        base = datetime.now(UTC) - timedelta(seconds=100)
        iso = [(base + timedelta(seconds=i)).isoformat() for i in range(4)]
        store.create_run(make_run("a", web, created_at=iso[0]), web)
        store.create_run(make_run("b", db, created_at=iso[1]), db)
        store.create_run(make_run("c", web + db, created_at=iso[2]), web + db)
        store.create_run(make_run("d", web, created_at=iso[3]), web)
        assert [r.run_id for r in store.list_runs()] == ["d", "c", "b", "a"]
        assert [r.run_id for r in store.list_runs(limit=2)] == ["d", "c"]
        assert [r.run_id for r in store.list_runs(host=COLON_HOST)] == ["c", "b"]
        assert [r.run_id for r in store.list_runs(host="web01", limit=1)] == ["d"]
        assert store.list_runs(host="nowhere") == []
        store.set_state("d", "finished", finished_at=utc_now())
        assert store.list_runs(limit=1)[0].state == "finished"

    def test_run_past_retention_is_expired(self, make_store: MakeStore) -> None:
        store = make_store(retention=1)
        hosts = make_hosts("web01")
        store.create_run(make_run("old", hosts), hosts)
        store.get_run("old")
        time.sleep(1.6)
        with pytest.raises(RunNotFoundError, match="expired"):
            store.get_run("old")
        assert store.list_runs() == []
        assert not store.is_live("old")

    def test_recreating_a_run_starts_it_afresh(self, started: tuple[RunStore, RunRecord]) -> None:
        store, run = started
        store.save_result(run.run_id, ok("web01"))
        store.set_state(run.run_id, "finished")
        again = replace(run, command="hostname")
        store.create_run(again, make_hosts("web01", COLON_HOST))
        assert store.get_run(run.run_id) == again
        assert store.results(run.run_id) == {}
