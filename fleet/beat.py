"""Celery beat for fleet: the inventory's schedules fire as ordinary runs.

``celery -A fleet beat`` (or ``fleet beat``) uses `InventoryScheduler` (fleet's Celery
settings name it in ``beat_scheduler``). It reads ``schedules:`` from the inventory
(``FLEET_INVENTORY``, default ``./inventory.yaml``) and, when one is due, starts a run
through the same path as ``fleet run`` (`fleet.scheduling.fire`): no task is sent for
the firing itself, the run's own chord is. Its state (each schedule's last firing, the
claim of every slot, the skipped count) lives in the run store (Redis), not in a shelve
file beside the process, so several beat processes fire each slot once and a restart
fires a missed slot at most once.

The inventory is read again when its file changes (checked every `RELOAD_CHECK_S`
seconds); a file that no longer loads keeps the previous schedules and says why. A bad
inventory at start stops beat with the key path and exit status 2.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import crontab, schedstate, schedule
from celery.utils.log import get_logger

from fleet.errors import EXIT_USAGE, FleetError, InventoryError, InventoryProblem
from fleet.inventory.loader import Inventory, load_inventory
from fleet.inventory.schedules import Schedule
from fleet.scheduling import Outcome, fire, slot_of
from fleet.session import RunSession
from fleet.settings import Settings

log = get_logger(__name__)

RELOAD_CHECK_S = 2.0
TASK_NAME = "fleet.schedule"  # shown by beat's own log lines; never sent


class every_slot(schedule):  # type: ignore[misc]  # lower case, as Celery names schedules
    """``every: N`` as wall-clock slots of N seconds aligned to the epoch: due once per
    slot, so every beat process agrees which firing is which (`scheduling.slot_of`)."""

    def is_due(self, last_run_at: datetime) -> schedstate:
        seconds = self.run_every.total_seconds()
        now = time.time()
        last_slot = math.floor(last_run_at.timestamp() / seconds)
        now_slot = math.floor(now / seconds)
        next_in = (now_slot + 1) * seconds - now
        return schedstate(now_slot > last_slot, max(next_in, 0.01))


def celery_schedule(item: Schedule, nowfun: Callable[[], datetime] | None = None) -> schedule:
    """The Celery schedule of an inventory schedule (`nowfun`: its clock, for a cron).

    Raises `ValueError` for a cron Celery cannot read."""
    if item.every is not None:
        return every_slot(timedelta(seconds=item.every))
    minute, hour, day_of_month, month, day_of_week = (item.cron or "").split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month,
        day_of_week=day_of_week,
        nowfun=nowfun,
    )


def check_schedules(inventory: Inventory) -> None:
    """Raise `InventoryError` naming each schedule whose cron Celery cannot read."""
    problems = []
    for item in inventory.schedules.values():
        try:
            celery_schedule(item)
        except (ValueError, TypeError) as exc:
            problems.append(
                InventoryProblem(f"schedules.{item.name}.cron", f"not a valid cron: {exc}")
            )
    if problems:
        raise InventoryError(inventory.source, problems)


def next_firing(item: Schedule, last_slot: int | None, now: datetime) -> datetime:
    """When `item` fires next after `now` (aware, UTC), as beat computes it."""
    if item.every is not None:
        return datetime.fromtimestamp(slot_of(item, now.timestamp()) + item.every, UTC)
    cron = celery_schedule(item, nowfun=lambda: now)
    last = datetime.fromtimestamp(last_slot, UTC) if last_slot is not None else now
    remaining: timedelta = cron.remaining_estimate(max(last, now - timedelta(minutes=1)))
    return now + max(remaining, timedelta(0))


class InventoryScheduler(Scheduler):  # type: ignore[misc]
    """Celery beat's scheduler: entries from the inventory; a due entry starts a run."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self._settings = Settings.load()
        if self._settings.is_embedded:
            _stop("no broker configured: set FLEET_BROKER_URL (e.g. redis://host:6379/0) "
                  "for beat to send runs to", EXIT_USAGE)  # fmt: skip
        try:
            self._session = RunSession(self._settings).__enter__()
        except FleetError as exc:
            _stop(str(exc), exc.exit_code)
        self._inventory: Inventory | None = None
        self._items: dict[str, Schedule] = {}
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        super().__init__(app, *args, **kwargs)

    # -- Celery's Scheduler API ------------------------------------------------------

    def setup_schedule(self) -> None:
        try:
            self._load()
        except FleetError as exc:
            for line in _lines(exc):
                print(f"fleet: {line}", file=sys.stderr)
            _stop(None, exc.exit_code)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + RELOAD_CHECK_S
            self._reload_if_changed()
        return float(min(super().tick(*args, **kwargs), RELOAD_CHECK_S))

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        item = self._items.get(entry.name)
        if item is None or self._inventory is None:
            return
        try:
            firing = fire(
                item,
                time.time(),
                store=self._session.store,
                inventory=self._inventory,
                settings=self._settings,
                submit=self._session.submit,
            )
        except FleetError as exc:  # the store is down: the next slot tries again
            log.error("fleet: schedule %s: not fired: %s", entry.name, exc)
            return
        level = {Outcome.FIRED: "info", Outcome.TAKEN: "debug", Outcome.FAILED: "error"}
        getattr(log, level.get(firing.outcome, "warning"))("fleet: %s", firing.message)

    def sync(self) -> None:  # state lives in the run store, written as it changes
        pass

    def close(self) -> None:
        self._session.close()
        super().close()

    # -- the inventory -----------------------------------------------------------------

    def _load(self) -> None:
        path = self._settings.inventory
        stamp = _stamp(path)
        inventory = load_inventory(path, max_bytes=self._settings.inventory_max_bytes)
        check_schedules(inventory)
        self._inventory, self._stamp = inventory, stamp
        self._items = dict(inventory.schedules)
        self.data = self._entries(self._items)
        self._heap = None  # Celery rebuilds its heap from the new entries
        names = ", ".join(f"{i.name} ({i.when})" for i in self._items.values()) or "none"
        log.info("fleet: beat: %d schedule(s) from %s: %s", len(self._items), path, names)

    def _reload_if_changed(self) -> None:
        if _stamp(self._settings.inventory) == self._stamp:
            return
        try:
            self._load()
        except FleetError as exc:
            self._stamp = _stamp(self._settings.inventory)  # say it once per change
            log.error(
                "fleet: beat: inventory changed but not taken, keeping the previous "
                "schedules: %s", " / ".join(_lines(exc)),
            )  # fmt: skip

    def _entries(self, items: Mapping[str, Schedule]) -> dict[str, ScheduleEntry]:
        now = datetime.now(UTC)
        entries = {}
        for name, item in items.items():
            last = self._session.store.beat_state(name).last_slot
            # A restart resumes from the last firing: a missed slot fires once, not a burst.
            last_run_at = datetime.fromtimestamp(last, UTC) if last is not None else now
            entries[name] = ScheduleEntry(
                name=name,
                task=TASK_NAME,
                schedule=celery_schedule(item),
                last_run_at=last_run_at,
                app=self.app,
            )
        return entries


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size)


def _lines(exc: FleetError) -> list[str]:
    return exc.render().splitlines() if isinstance(exc, InventoryError) else [str(exc)]


def _stop(message: str | None, status: int) -> None:
    if message:
        print(f"fleet: {message}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(status)
