"""Rolling runs as plain logic: sizes, plans, deadlines, and the decision after a batch
(against a real SQLite store)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.batches import abandon_rest, next_batch, owns_fanout_slot, take_fanout_slot
from fleet.command import ExecOptions
from fleet.errors import UsageError
from fleet.inventory.hosts import Host
from fleet.lifecycle import (
    ASSUMED_SLOTS,
    RunRequest,
    cancel_run,
    default_deadline,
    finalize_run,
    host_budget,
)
from fleet.results import HostResult, RunRecord, Status, utc_now
from fleet.rollout import Rollout, Size, parse_size
from fleet.store.protocol import Slot
from fleet.store.sqlite_store import SqliteRunStore

NAMES = tuple(f"web{i:02d}" for i in range(1, 7))
HOSTS = tuple(Host(n, f"10.0.0.{i}") for i, n in enumerate(NAMES, start=1))


@pytest.mark.parametrize(
    ("text", "size"),
    [("1", Size(1)), ("25", Size(25)), ("50%", Size(50, True)), ("100%", Size(100, True))],
)
def test_sizes_parse(text: str, size: Size) -> None:
    assert parse_size(text, "--batch") == size


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("0", "at least 1"),
        ("0%", "at least 1"),
        ("150%", "at most 100%"),
        ("-1", "whole number or a percentage"),
        ("", "whole number or a percentage"),
        ("2.5", "whole number or a percentage"),
        ("%", "whole number or a percentage"),
    ],
)
def test_bad_sizes_are_refused_naming_the_option(text: str, said: str) -> None:
    with pytest.raises(UsageError, match=said) as caught:
        parse_size(text, "--max-fail")
    assert str(caught.value).startswith("--max-fail ")


def test_a_share_rounds_up_and_is_at_least_one_host() -> None:
    assert Size(50, True).of(6) == 3 and Size(50, True).of(5) == 3
    assert Size(1, True).of(10) == 1 and Size(100, True).of(7) == 7


def test_plan_in_inventory_order_and_random_keeps_every_host_once() -> None:
    assert Rollout(batch=Size(4)).plan(NAMES) == (NAMES[:4], NAMES[4:])
    assert Rollout(batch=Size(50, True)).plan(NAMES) == (NAMES[:3], NAMES[3:])
    assert Rollout().plan(NAMES) == ()
    shuffled = Rollout(batch=Size(2), order="random").plan(NAMES)
    assert [len(b) for b in shuffled] == [2, 2, 2]
    assert sorted(n for b in shuffled for n in b) == list(NAMES)
    assert Rollout(batch=Size(4)).batch_sizes(6) == [4, 2]


def test_max_fail_needs_batches_and_fanout_is_positive() -> None:
    with pytest.raises(UsageError, match="needs --batch"):
        RunRequest("uptime", "web", HOSTS, ExecOptions(), rollout=Rollout(max_fail=Size(1)))
    with pytest.raises(UsageError, match="--fanout"):
        Rollout(fanout=0)


def test_default_deadline_adds_up_batches_and_fanout_waves() -> None:
    options = ExecOptions(command_timeout=10, connect_timeout=1, auth_timeout=1)
    budget = host_budget(options)
    assert default_deadline(options, 6) == budget + 60
    assert default_deadline(options, 6, Rollout(batch=Size(2))) == 3 * budget + 60
    assert default_deadline(options, 6, Rollout(fanout=2)) == 3 * budget + 60
    many = 2 * ASSUMED_SLOTS
    assert default_deadline(options, many, Rollout(batch=Size(many))) == 2 * budget + 60


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRunStore]:
    s = SqliteRunStore(tmp_path / "history.sqlite3")
    yield s
    s.close()


def batched_run(store: SqliteRunStore, max_fail: int | None) -> RunRecord:
    run = RunRecord(
        run_id="r1",
        command="uptime",
        pattern="web",
        hosts=NAMES,
        created_at=utc_now(),
        deadline=time.time() + 600,
        batches=(NAMES[:2], NAMES[2:4], NAMES[4:]),
        max_fail=max_fail,
    )
    store.create_run(run, HOSTS)
    return run


def result(name: str, status: Status) -> HostResult:
    return HostResult(name, status, exit_code=0 if status is Status.OK else 1)


def test_next_batch_goes_on_while_under_the_budget_and_only_once(store: SqliteRunStore) -> None:
    batched_run(store, max_fail=2)
    store.save_result("r1", result("web01", Status.OK))
    store.save_result("r1", result("web02", Status.FAILED))
    assert next_batch(store, "r1", 0, worker="w1") == 1
    # A redelivered chord callback publishes nothing again.
    assert next_batch(store, "r1", 0, worker="w2") is None
    events = [e for _, e in store.events("r1") if e.get("type") == "batch"]
    assert events == [{"type": "batch", "index": "2", "count": "3"}]


def test_next_batch_skips_the_rest_once_the_budget_is_reached(store: SqliteRunStore) -> None:
    batched_run(store, max_fail=1)
    store.save_result("r1", result("web01", Status.OK))
    store.save_result("r1", result("web02", Status.UNREACHABLE))
    assert next_batch(store, "r1", 0, worker="w1") is None
    results = store.results("r1")
    assert {n: results[n].status for n in NAMES[2:]} == dict.fromkeys(NAMES[2:], Status.SKIPPED)
    assert "1 host not ok reached" in (results["web03"].error or "")
    # Claimed by the finalizer: a late message for a skipped host never runs it.
    assert not store.claim_host("r1", "web03", "w1")


def test_a_batch_the_broker_failed_to_take_ends_its_hosts_with_the_reason(
    store: SqliteRunStore,
) -> None:
    """The chord callback publishes the next batch; if the broker fails halfway, part of
    the batch may be queued and the rest not. Every host not started from that batch on
    ends `error` naming the failure (not `lost` at the deadline), and a message that did
    get through can no longer start its host."""
    batched_run(store, max_fail=None)
    for name in NAMES[:2]:
        store.save_result("r1", result(name, Status.OK))
    assert next_batch(store, "r1", 0, worker="w1") == 1
    assert store.claim_host("r1", "web03", "w1")  # its message got through and started
    abandon_rest(store, "r1", 1, "ConnectionError: Connection refused")
    results = store.results("r1")
    assert "web03" not in results  # still running, on its worker
    for name in NAMES[3:]:
        assert results[name].status is Status.ERROR
        assert results[name].error == (
            "not started: the broker failed while batch 2 was published: "
            "ConnectionError: Connection refused"
        )
        assert not store.claim_host("r1", name, "w2")


def test_no_next_batch_after_the_last_or_a_cancel(store: SqliteRunStore) -> None:
    batched_run(store, max_fail=None)
    assert next_batch(store, "r1", 2, worker="w1") is None
    assert cancel_run(store, "r1")
    assert next_batch(store, "r1", 0, worker="w1") is None


def test_fanout_slots_bound_hosts_in_flight_and_free_when_held_too_long(
    store: SqliteRunStore,
) -> None:
    batched_run(store, max_fail=None)
    options = ExecOptions(command_timeout=1, connect_timeout=1, auth_timeout=1).to_message()
    assert take_fanout_slot(store, "r1", "web01", 2, options) is Slot.TAKEN
    assert take_fanout_slot(store, "r1", "web02", 2, options) is Slot.TAKEN
    assert take_fanout_slot(store, "r1", "web03", 2, options) is Slot.FULL
    assert take_fanout_slot(store, "r1", "web02", 2, options) is Slot.HELD  # its holder's
    store.release_slot("fanout:r1", "web01")
    assert take_fanout_slot(store, "r1", "web03", 2, options)
    # A holder that died frees its slot once its hold time has passed.
    assert store.take_slot("fanout:r1", "web04", 3, 0.05)
    time.sleep(0.1)
    assert store.take_slot("fanout:r1", "web05", 3, 60)


def test_at_the_deadline_the_hosts_of_batches_never_sent_say_why(store: SqliteRunStore) -> None:
    # Batch 1's web02 started and its worker died: no result, so batch 1's chord never
    # completed and batch 2 was never sent. Its hosts were not waiting for a worker on
    # their queue, and their status says so.
    run = batched_run(store, max_fail=None)
    store.save_result("r1", result("web01", Status.OK))
    assert store.start_host("r1", "web02", "w1@node", time.time()) == "started"
    report = finalize_run(store, "r1", now=run.deadline + 1)
    assert report is not None
    got = {r.host: r for r in report.results}
    assert got["web02"].status is Status.LOST and "its worker died" in (got["web02"].error or "")
    for name in NAMES[2:]:
        assert got[name].status is Status.LOST
        assert "was never sent, as batch 1 did not end" in (got[name].error or "")
    assert "batch (2 of 3)" in (got["web03"].error or "")
    assert "batch (3 of 3)" in (got["web05"].error or "")


def test_at_the_deadline_a_sent_batchs_unstarted_host_names_its_queue(
    store: SqliteRunStore,
) -> None:
    run = batched_run(store, max_fail=None)
    for name in NAMES[:2]:
        store.save_result("r1", result(name, Status.OK))
    assert next_batch(store, "r1", 0, worker="w1") == 1  # batch 2 sent; nobody took web03
    report = finalize_run(store, "r1", now=run.deadline + 1)
    assert report is not None
    got = {r.host: r for r in report.results}
    assert "is a worker consuming queue 'fleet'?" in (got["web03"].error or "")
    assert "batch (3 of 3) was never sent, as batch 2 did not end" in (got["web05"].error or "")


@pytest.mark.parametrize(
    ("slot", "status", "owns"),
    [
        (Slot.TAKEN, Status.OK, True),
        (Slot.TAKEN, None, True),  # found the host claimed, the first delivery done: new slot
        (Slot.HELD, None, False),  # a copy of a delivery still running the host
        (Slot.HELD, Status.OK, True),  # the first delivery died before claiming the host
        (Slot.FULL, Status.OK, False),
    ],
)
def test_a_copy_of_a_running_hosts_message_leaves_its_fanout_slot_held(
    slot: Slot, status: Status | None, owns: bool
) -> None:
    got = None if status is None else result("web01", status)
    assert owns_fanout_slot(slot, got) is owns


def test_the_verbose_host_table_says_each_hosts_batch_in_a_rolling_run() -> None:
    from fleet import report as render
    from fleet.results import RunReport

    run = RunRecord(
        "r1", "uptime", "web", NAMES[:3], utc_now(), time.time(),
        batches=(NAMES[:2], NAMES[2:3]), max_fail=1,
    )  # fmt: skip
    results = [result(NAMES[0], Status.OK), result(NAMES[1], Status.FAILED)]
    results.append(HostResult.not_run(NAMES[2], Status.SKIPPED, "not started"))
    lines = render.render_text(RunReport.assemble(run, results), verbose=True).splitlines()
    header = next(line for line in lines if line.startswith("HOST"))
    assert header.split()[:3] == ["HOST", "STATUS", "BATCH"]
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("web0")}
    assert rows["web03"][1:3] == ["skipped", "2"] and rows["web01"][1:3] == ["ok", "1"]
    unbatched = RunReport.assemble(replace_batches(run), results[:2])
    assert "BATCH" not in render.render_text(unbatched, verbose=True)


def replace_batches(run: RunRecord) -> RunRecord:
    from dataclasses import replace

    return replace(run, batches=(), max_fail=None)
