"""The inventory's ``schedules:``: commands Celery beat runs (`fleet.beat`), as data.

Each schedule names a `command`, a `group` (a pattern, resolved when it fires), either
`every` (a duration: ``30s``, ``5m``, ``1h``, ``1d`` or whole seconds) or `cron` (five
fields as crontab(5) writes them: minute hour day-of-month month day-of-week, read by
Celery's ``crontab`` in the app's ``timezone``, UTC unless a site sets it), and the run
options a user sets on ``fleet run``: `timeout`, `connect_timeout`, `deadline`, `sudo`
(or `become`), `sudo_user`, `env`, `batch`, `max_fail`, `fanout`, `batch_order`; and
`overlap`: ``skip`` (default: a firing while the
schedule's previous run still runs is skipped) or ``allow``.

Only the structure is checked here (no Celery import); `fleet.beat` checks a `cron`
expression's fields with Celery's own parser when beat starts, with the same key path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fleet.errors import UsageError
from fleet.inventory.noderange import name_problem
from fleet.inventory.values import VAR_CHECKS, seconds
from fleet.rollout import BATCH_ORDERS, NO_ROLLOUT, Rollout, Size, parse_size
from fleet.textsafe import show_value

SCHEDULE_KEYS = (
    "batch", "batch_order", "become", "command", "connect_timeout", "cron", "deadline", "env",
    "every", "fanout", "group", "max_fail", "overlap", "sudo", "sudo_user", "timeout",
)  # fmt: skip
OVERLAP_POLICIES = ("skip", "allow")


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule, checked. Durations in seconds; exactly one of `every` and `cron`."""

    name: str
    command: str
    group: str  # a pattern, checked against the inventory at load time
    every: int | None = None  # seconds
    cron: str | None = None  # "m h dom mon dow"
    timeout: float | None = None
    connect_timeout: float | None = None
    deadline: float | None = None
    sudo: bool = False
    sudo_user: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    overlap: str = "skip"
    rollout: Rollout = NO_ROLLOUT  # batch, max_fail, fanout, batch_order (fleet.rollout)

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    @property
    def when(self) -> str:
        """``every 30s`` or ``cron */5 * * * *``, for people."""
        return f"every {self.every}s" if self.every is not None else f"cron {self.cron}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "command": self.command, "group": self.group,
            "every": self.every, "cron": self.cron, "timeout": self.timeout,
            "connect_timeout": self.connect_timeout, "deadline": self.deadline,
            "sudo": self.sudo, "sudo_user": self.sudo_user, "env": dict(self.env),
            "overlap": self.overlap,
            "batch": _size_text(self.rollout.batch),
            "max_fail": _size_text(self.rollout.max_fail),
            "fanout": self.rollout.fanout, "batch_order": self.rollout.order,
        }  # fmt: skip


def _size_text(size: Size | None) -> str | None:
    return None if size is None else str(size)


def check_schedule(
    name: Any, body: Any, path: str, add: Callable[[str, str], None]
) -> Schedule | None:
    """The schedule `name: body` at key `path`, or None after `add(path, message)` for
    each problem found."""
    problems: list[tuple[str, str]] = []

    def problem(where: str, message: str) -> None:
        problems.append((where, message))

    if found := name_problem(name, "schedule name"):
        problem(path, found)
    elif not isinstance(body, dict):
        problem(path, f"expected a mapping with keys {', '.join(SCHEDULE_KEYS)}, "
                f"got {show_value(body)}")  # fmt: skip
    else:
        schedule = _check_body(str(name), body, path, problem)
        if not problems and schedule is not None:
            return schedule
    for where, message in problems:
        add(where, message)
    return None


def _check_body(
    name: str, body: dict[Any, Any], path: str, problem: Callable[[str, str], None]
) -> Schedule | None:
    for key in body:
        if key not in SCHEDULE_KEYS:
            problem(f"{path}.{key}", f"unknown key {show_value(key)} "
                    f"(allowed: {', '.join(SCHEDULE_KEYS)})")  # fmt: skip
    for key in ("command", "group"):
        if key not in body:
            problem(path, f"missing key {key!r}")
        elif not isinstance(body[key], str) or not body[key].strip():
            problem(f"{path}.{key}", f"expected a non-empty string, got {show_value(body[key])}")
    every, cron = _when(body, path, problem)
    durations = {}
    for key in ("timeout", "connect_timeout", "deadline"):
        if body.get(key) is not None:
            durations[key] = seconds(body[key])
            if durations[key] is None:
                problem(f"{path}.{key}", f"expected seconds or a duration, got "
                        f"{show_value(body[key])}")  # fmt: skip
    if "sudo" in body and "become" in body and body["sudo"] != body["become"]:
        problem(path, "sudo and become disagree (they are one setting: use one)")
    sudo = body.get("sudo", body.get("become", False))
    checks = {"sudo": "become", "become": "become", "sudo_user": "become_user", "env": "env"}
    for key, var in checks.items():
        check = VAR_CHECKS[var]
        if key in body and (found := check(body[key])):
            problem(f"{path}.{key}", found)
    overlap = body.get("overlap", "skip")
    if overlap not in OVERLAP_POLICIES:
        problem(f"{path}.overlap", f"expected skip or allow, got {show_value(overlap)}")
    rollout = _rollout(body, path, problem)
    return Schedule(
        name=name,
        command=str(body.get("command", "")),
        group=str(body.get("group", "")),
        every=every,
        cron=cron,
        timeout=durations.get("timeout"),
        connect_timeout=durations.get("connect_timeout"),
        deadline=durations.get("deadline"),
        sudo=sudo is True,
        sudo_user=body.get("sudo_user") if isinstance(body.get("sudo_user"), str) else None,
        env=body["env"] if isinstance(body.get("env"), dict) else {},
        overlap=str(overlap),
        rollout=rollout,
    )


def _rollout(body: dict[Any, Any], path: str, problem: Callable[[str, str], None]) -> Rollout:
    """`batch`, `max_fail` (N or "N%"), `fanout` (N), `batch_order`, as on ``fleet run``."""
    values: dict[str, Any] = {}
    for key in ("batch", "max_fail"):
        if body.get(key) is None:
            continue
        raw = body[key]
        try:
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise UsageError(f"{key} {raw!r}")
            values[key] = parse_size(str(raw), key)
        except UsageError:
            problem(f"{path}.{key}", f"expected a host count or a percentage (N or 'N%'), "
                    f"at least 1, got {show_value(raw)}")  # fmt: skip
    fanout = body.get("fanout")
    if fanout is not None:
        if isinstance(fanout, bool) or not isinstance(fanout, int) or fanout < 1:
            problem(f"{path}.fanout", f"expected a whole number >= 1, got {show_value(fanout)}")
        else:
            values["fanout"] = fanout
    order = body.get("batch_order", "inventory")
    if order not in BATCH_ORDERS:
        problem(f"{path}.batch_order", f"expected inventory or random, got {show_value(order)}")
    else:
        values["order"] = order
    if "max_fail" in values and "batch" not in values:
        problem(f"{path}.max_fail", "needs batch: the budget is checked between batches")
        values.pop("max_fail")
    return Rollout(**values)


def _when(
    body: dict[Any, Any], path: str, problem: Callable[[str, str], None]
) -> tuple[int | None, str | None]:
    if ("every" in body) == ("cron" in body):
        problem(path, "expected one of 'every' (a duration) or 'cron' (five fields)")
        return None, None
    if "every" in body:
        every = seconds(body["every"])
        if every is None or every != int(every):
            expected = "a duration like 30s, 5m, 1h, 1d or whole seconds"
            problem(f"{path}.every", f"expected {expected}, got {show_value(body['every'])}")
            return None, None
        return int(every), None
    cron = body["cron"]
    if not isinstance(cron, str) or len(cron.split()) != 5:
        problem(f"{path}.cron", "expected five fields 'minute hour day-of-month month "
                f"day-of-week' (crontab(5)), got {show_value(cron)}")  # fmt: skip
        return None, None
    return None, " ".join(cron.split())
