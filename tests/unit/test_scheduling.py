"""Firing a schedule (fleet.scheduling) against a real SQLite store and a fake submit;
the Celery schedules fleet.beat builds from it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet.beat import check_schedules, every_slot, next_firing
from fleet.errors import BackendError, InventoryError
from fleet.inventory.loader import parse_inventory
from fleet.inventory.schedules import Schedule
from fleet.lifecycle import RunRequest, new_run_id
from fleet.results import RunRecord, utc_now
from fleet.scheduling import Outcome, fire, slot_of
from fleet.settings import Settings
from fleet.store.sqlite_store import SqliteRunStore

INVENTORY = parse_inventory(
    """
groups:
  web: {hosts: {web01: {}, web02: {}}}
  db: {hosts: {db01: {}}}
schedules:
  disk: {command: df -h, group: web, every: 10s, timeout: 30, env: {A: "1"}}
  nightly: {command: cleanup, group: "db", cron: "30 2 * * *", sudo: true, deadline: 1h}
  loose: {command: x, group: web, every: 10s, overlap: allow}
""",
    "inventory.yaml",
)
SETTINGS = Settings.load(env={})


class FakeSubmit:
    """Records each request and "starts" a run in the store (running, deadline ahead)."""

    def __init__(self, store: SqliteRunStore) -> None:
        self.store = store
        self.requests: list[RunRequest] = []

    def __call__(self, request: RunRequest) -> RunRecord:
        self.requests.append(request)
        run = RunRecord(
            new_run_id(), request.command, request.pattern,
            tuple(h.name for h in request.hosts), utc_now(), time.time() + 60,
            schedule=request.schedule,
        )  # fmt: skip
        self.store.create_run(run, request.hosts)
        return run


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRunStore]:
    s = SqliteRunStore(tmp_path / "history.sqlite3")
    yield s
    s.close()


def _fire(name: str, now: float, store: SqliteRunStore, submit: FakeSubmit) -> Outcome:
    item = INVENTORY.schedules[name]
    firing = fire(item, now, store=store, inventory=INVENTORY, settings=SETTINGS, submit=submit)
    return firing.outcome


def test_slots_are_aligned_wall_clock_periods() -> None:
    every = Schedule("s", "x", "web", every=10)
    assert slot_of(every, 1_800_000_003.7) == 1_800_000_000
    assert slot_of(every, 1_800_000_009.99) == 1_800_000_000
    assert slot_of(every, 1_800_000_010.0) == 1_800_000_010
    cron = Schedule("c", "x", "web", cron="* * * * *")
    assert slot_of(cron, 120.5) == 120 and slot_of(cron, 179.9) == 120


def test_a_firing_is_an_ordinary_run_with_the_schedules_options(
    store: SqliteRunStore,
) -> None:
    submit = FakeSubmit(store)
    assert _fire("disk", 1_800_000_001, store, submit) is Outcome.FIRED
    (request,) = submit.requests
    assert request.command == "df -h" and request.pattern == "web"
    assert [h.name for h in request.hosts] == ["web01", "web02"]
    assert request.options.command_timeout == 30 and dict(request.options.env) == {"A": "1"}
    assert request.schedule == "disk" and request.deadline_s is None
    state = store.beat_state("disk")
    assert state.last_slot == 1_800_000_000 and state.last_run_id is not None
    assert store.get_run(state.last_run_id).schedule == "disk"

    assert _fire("nightly", 1_800_000_001, store, submit) is Outcome.FIRED
    nightly = submit.requests[-1]
    assert nightly.options.become is True and nightly.deadline_s == 3600


def test_each_slot_fires_once_across_beat_processes(store: SqliteRunStore) -> None:
    submit = FakeSubmit(store)
    # Two beat processes (same store) wake for the same slot: one run.
    assert _fire("loose", 1_800_000_001, store, submit) is Outcome.FIRED
    assert _fire("loose", 1_800_000_002.5, store, submit) is Outcome.TAKEN
    assert _fire("loose", 1_800_000_011, store, submit) is Outcome.FIRED
    assert len(submit.requests) == 2


def test_overlap_skip_skips_while_the_previous_run_is_live_and_counts(
    store: SqliteRunStore,
) -> None:
    submit = FakeSubmit(store)
    assert _fire("disk", 1_800_000_001, store, submit) is Outcome.FIRED
    first = store.beat_state("disk").last_run_id
    assert first is not None
    assert _fire("disk", 1_800_000_011, store, submit) is Outcome.SKIPPED
    assert _fire("disk", 1_800_000_021, store, submit) is Outcome.SKIPPED
    assert store.beat_state("disk").skipped == 2
    store.set_state(first, "finished", expected="running")
    assert _fire("disk", 1_800_000_031, store, submit) is Outcome.FIRED
    # overlap: allow starts another run while one still runs.
    assert _fire("loose", 1_800_000_001, store, submit) is Outcome.FIRED
    assert _fire("loose", 1_800_000_011, store, submit) is Outcome.FIRED


def test_a_pattern_that_matches_nothing_now_fires_nothing_and_says_why(
    store: SqliteRunStore,
) -> None:
    inventory = parse_inventory(
        "groups: {web: {hosts: {w1: {}}}}\n"
        "schedules: {s: {command: x, group: 'web:!w1*', every: 5s}}\n",
        "x",
    )
    submit = FakeSubmit(store)
    firing = fire(
        inventory.schedules["s"], 1_800_000_001, store=store, inventory=inventory,
        settings=SETTINGS, submit=submit,
    )  # fmt: skip
    assert firing.outcome is Outcome.EMPTY and "nothing fired" in firing.message
    assert submit.requests == []


def test_a_run_that_cannot_start_is_an_outcome_not_an_exception(
    store: SqliteRunStore,
) -> None:
    def broken(request: RunRequest) -> RunRecord:
        raise BackendError("broker at redis://x unreachable: refused")

    firing = fire(
        INVENTORY.schedules["disk"], 1_800_000_001, store=store, inventory=INVENTORY,
        settings=SETTINGS, submit=broken,
    )  # fmt: skip
    assert firing.outcome is Outcome.FAILED and "unreachable" in firing.message
    assert store.beat_state("disk").last_run_id is None


def test_every_slot_is_due_once_per_slot() -> None:
    sched = every_slot(timedelta(seconds=10))
    now = datetime.now(UTC)
    due, next_in = sched.is_due(now)
    assert not due and 0 < next_in <= 10
    due, _ = sched.is_due(now - timedelta(seconds=10))
    assert due
    # A beat that was away for an hour fires once now (one slot), not 360 times.
    due, next_in = sched.is_due(now - timedelta(hours=1))
    assert due and next_in <= 10


def test_next_firing_for_every_and_cron() -> None:
    now = datetime(2026, 11, 30, 9, 0, 3, tzinfo=UTC)
    assert next_firing(INVENTORY.schedules["disk"], None, now) == now.replace(second=10)
    nightly = next_firing(INVENTORY.schedules["nightly"], None, now)
    assert nightly.hour == 2 and nightly.minute == 30 and nightly > now


def test_a_cron_that_celery_cannot_read_names_its_key() -> None:
    inventory = parse_inventory(
        "groups: {web: {hosts: {w1: {}}}}\n"
        "schedules: {bad: {command: x, group: web, cron: '61 * * * *'}}\n",
        "inventory.yaml",
    )
    with pytest.raises(InventoryError) as err:
        check_schedules(inventory)
    assert err.value.render().startswith("inventory.yaml: schedules.bad.cron: not a valid cron")


def test_a_schedule_rolls_out_like_fleet_run(store: SqliteRunStore) -> None:
    from fleet.rollout import Rollout, Size

    inventory = parse_inventory(
        """
groups:
  web: {hosts: {web01: {}, web02: {}, web03: {}}}
schedules:
  restart: {command: systemctl restart app, group: web, every: 1h, batch: "50%",
            max_fail: 1, fanout: 2, batch_order: random}
""",
        "inventory.yaml",
    )
    item = inventory.schedules["restart"]
    assert item.rollout == Rollout(Size(50, True), Size(1), 2, "random")
    assert item.to_dict()["batch"] == "50%" and item.to_dict()["max_fail"] == "1"
    submit = FakeSubmit(store)
    fire(item, 1_800_000_001, store=store, inventory=inventory, settings=SETTINGS, submit=submit)
    assert submit.requests[0].rollout == item.rollout


@pytest.mark.parametrize(
    ("extra", "where", "said"),
    [
        ("batch: 0", "schedules.s.batch", "at least 1"),
        ("batch: 150%", "schedules.s.batch", "percentage"),
        ("batch: true", "schedules.s.batch", "host count"),
        ("max_fail: 2", "schedules.s.max_fail", "needs batch"),
        ("fanout: -1", "schedules.s.fanout", "whole number"),
        ("batch: 2, batch_order: sorted", "schedules.s.batch_order", "inventory or random"),
    ],
)
def test_bad_rollout_values_in_a_schedule_name_their_key(extra: str, where: str, said: str) -> None:
    text = (
        "groups: {web: {hosts: {web01: {}}}}\n"
        f"schedules: {{s: {{command: x, group: web, every: 1m, {extra}}}}}\n"
    )
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, "inventory.yaml")
    rendered = caught.value.render()
    assert where in rendered and said in rendered, rendered
