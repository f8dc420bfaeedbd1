"""Firing one schedule: what Celery beat does when an inventory schedule is due.

No Celery here (`fleet.beat` is the Celery side); the unit tests call `fire` with an
SQLite store and a fake submit function.

A firing belongs to a slot: for ``every: N`` the N-second slot of the wall clock it
falls in (slots are aligned to the epoch, so every beat process computes the same
ones), for ``cron`` its minute. The slot is claimed in the run store first, so two beat
processes (two machines, a restart while the old one still lives) fire each slot once.
Then the overlap policy, then the pattern is resolved against the inventory as it is
now, and the run starts like any other: run id, claims, deadline, report, history.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from fleet.command import ExecOptions
from fleet.errors import FleetError, PatternError
from fleet.inventory.loader import Inventory
from fleet.inventory.schedules import Schedule
from fleet.lifecycle import RunRequest, chosen_timeouts, fit_timeouts
from fleet.results import RunRecord
from fleet.settings import Settings
from fleet.store.protocol import RunStore

CRON_SLOT_S = 60  # cron's resolution: one minute
#: A slot's claim outlives the slot by this much at least (clock skew between beats).
MIN_CLAIM_TTL_S = 300


class Outcome(StrEnum):
    FIRED = "fired"
    TAKEN = "taken"  # another beat process fired this slot
    SKIPPED = "skipped"  # overlap: skip, the previous run still runs
    EMPTY = "empty"  # the pattern matched no host
    FAILED = "failed"  # the run could not be submitted (broker down, bad options)


@dataclass(frozen=True, slots=True)
class Firing:
    outcome: Outcome
    slot: int
    run_id: str | None = None
    message: str = ""


def slot_size(schedule: Schedule) -> int:
    """Seconds of one firing slot: the `every` period, or cron's minute."""
    return schedule.every if schedule.every is not None else CRON_SLOT_S


def slot_of(schedule: Schedule, now: float) -> int:
    """The slot (epoch seconds) a firing at `now` (epoch seconds) belongs to."""
    size = slot_size(schedule)
    return int(math.floor(now / size) * size)


def request_for(schedule: Schedule, inventory: Inventory, settings: Settings) -> RunRequest:
    """The run a firing of `schedule` starts, with the hosts its pattern selects now.

    Raises `PatternError` when the pattern matches no host, `ConfigError` for options.
    """
    hosts = inventory.select(schedule.group)
    overrides: dict[str, object] = {"env": dict(schedule.env)}
    if schedule.timeout is not None:
        overrides["command_timeout"] = schedule.timeout
    if schedule.connect_timeout is not None:
        overrides["connect_timeout"] = schedule.connect_timeout
    if schedule.sudo:
        overrides["become"] = True
        overrides["become_user"] = schedule.sudo_user
    options = ExecOptions.from_settings(settings, **overrides)
    given = {n for n in ("command_timeout", "connect_timeout") if n in overrides}
    options = fit_timeouts(options, schedule.deadline, chosen_timeouts(settings, given))
    return RunRequest(
        schedule.command,
        schedule.group,
        hosts,
        options,
        deadline_s=schedule.deadline,
        schedule=schedule.name,
        rollout=schedule.rollout,
    )


def fire(
    schedule: Schedule,
    now: float,
    *,
    store: RunStore,
    inventory: Inventory,
    settings: Settings,
    submit: Callable[[RunRequest], RunRecord],
) -> Firing:
    """Fire `schedule` for the slot of `now`, at most once per slot across beat processes.

    Never raises for a run that cannot start: the outcome and its one-line message say
    why (the caller logs it).
    Raises `BackendError` when the run store cannot be reached to claim the slot.
    """
    slot = slot_of(schedule, now)
    ttl = max(3 * slot_size(schedule), MIN_CLAIM_TTL_S)
    if not store.claim_slot(schedule.name, slot, ttl):
        message = f"schedule {schedule.name}: slot {slot} already fired by another beat"
        return Firing(Outcome.TAKEN, slot, message=message)
    if schedule.overlap == "skip":
        previous = store.beat_state(schedule.name).last_run_id
        if previous is not None and store.is_live(previous):
            skipped = store.count_skip(schedule.name)
            message = (
                f"schedule {schedule.name}: firing skipped: run {previous} still running "
                f"(overlap: skip; {skipped} skipped so far)"
            )
            return Firing(Outcome.SKIPPED, slot, previous, message)
    try:
        request = request_for(schedule, inventory, settings)
    except PatternError as exc:
        message = f"schedule {schedule.name}: nothing fired: {exc}"
        return Firing(Outcome.EMPTY, slot, message=message)
    try:
        run = submit(request)
    except FleetError as exc:
        message = f"schedule {schedule.name}: run not started: {exc}"
        return Firing(Outcome.FAILED, slot, message=message)
    store.record_firing(schedule.name, slot, run.run_id)
    message = f"schedule {schedule.name}: run {run.run_id} started on {len(run.hosts)} host(s)"
    return Firing(Outcome.FIRED, slot, run.run_id, message)
