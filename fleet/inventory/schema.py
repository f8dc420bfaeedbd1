"""The inventory file's schema: which keys exist, and what each value may be.

`check_inventory` turns the data loaded from YAML into an `InventorySpec` (the file's
content, checked but not yet resolved), appending one `InventoryProblem` per problem
with its key path, so that the user sees every problem in one go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleet.errors import InventoryProblem, PatternError
from fleet.inventory.ansible_vars import FOREIGN_KEYS
from fleet.inventory.noderange import COUNT_CAP, count_range, expand_hosts, fold_hosts, name_problem
from fleet.inventory.schedules import Schedule, check_schedule
from fleet.inventory.values import VAR_CHECKS, json_problem
from fleet.textsafe import show_value

#: Hosts listed across the file once ranges are expanded (a host listed in two groups
#: counts twice). Counted before anything is expanded: a larger file is refused.
MAX_HOSTS = 100_000

TOP_KEYS = ("defaults", "groups", "schedules")
GROUP_KEYS = ("children", "hosts", "queue", "vars")
# A secret in the inventory would travel in every task message and sit in Redis.
SECRET_KEYS = frozenset(
    {"password", "become_password", "ansible_password", "ansible_become_password",
     "ansible_ssh_pass", "ansible_become_pass", "ssh_pass"}
)  # fmt: skip


def join_path(path: str, key: object) -> str:
    """`path` extended by `key`; a key that would not print plainly (or is very long)
    is shown escaped and shortened."""
    text = key if isinstance(key, str) else str(key)
    # isprintable() is false for every whitespace but " ": one C-speed pass, no loop
    if not text or len(text) > 100 or not text.isprintable() or " " in text:
        text = show_value(text)
    return f"{path}.{text}" if path else text


@dataclass(slots=True)
class GroupSpec:
    """A group as the file states it, checked, before precedence is applied."""

    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # expanded name -> vars
    vars: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class InventorySpec:
    defaults: dict[str, Any]
    groups: dict[str, GroupSpec]  # in file order
    schedules: dict[str, Schedule]


def check_inventory(data: Any, problems: list[InventoryProblem]) -> InventorySpec:
    """Check `data` loaded from an inventory file; append each problem to `problems`."""
    return _SchemaChecker(problems).check(data)


class _SchemaChecker:
    """Checks the loaded data, appending every problem found."""

    def __init__(self, problems: list[InventoryProblem]) -> None:
        self.problems = problems
        self.expand = True  # False once the hosts listed are known to be too many

    def add(self, path: str, message: str) -> None:
        self.problems.append(InventoryProblem(path, message))

    def check(self, data: Any) -> InventorySpec:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.add(
                "", f"expected a mapping with keys {', '.join(TOP_KEYS)}, got {show_value(data)}"
            )
            return InventorySpec({}, {}, {})
        self.unknown_keys(data, "", TOP_KEYS)
        defaults = self.host_vars(data.get("defaults"), "defaults")
        groups = self.groups(data.get("groups"))
        schedules = self.schedules(data.get("schedules"))
        return InventorySpec(defaults, groups, schedules)

    def unknown_keys(self, data: dict[Any, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in data:
            if key not in allowed:
                where = join_path(path, key)
                self.add(where, f"unknown key {show_value(key)} (allowed: {', '.join(allowed)})")

    def mapping(self, raw: Any, path: str, what: str) -> dict[Any, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.add(path, f"expected a mapping of {what}, got {show_value(raw)}")
            return {}
        return raw

    def host_vars(self, raw: Any, path: str) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for key, value in self.mapping(raw, path, "variables").items():
            where = join_path(path, key)
            if not isinstance(key, str) or not key:
                self.add(where, f"variable names must be non-empty strings, got {show_value(key)}")
            elif key in SECRET_KEYS:
                self.add(where, "no secrets in the inventory: it travels in task messages; "
                         "use password_env: NAME (a variable set on the workers)")  # fmt: skip
            elif key in FOREIGN_KEYS:  # another tool's name: as a free var it would do nothing
                self.add(where, f"{key!r} is not a fleet variable: did you mean "
                         f"{FOREIGN_KEYS[key]}?")  # fmt: skip
            elif problem := VAR_CHECKS.get(key, json_problem)(value):
                self.add(where, problem)
            else:
                checked[key] = value
        return checked

    def groups(self, raw: Any) -> dict[str, GroupSpec]:
        groups: dict[str, GroupSpec] = {}
        raw = self.mapping(raw, "groups", "group names to groups")
        self.expand = self.count_hosts(raw)
        for name, body in raw.items():
            path = join_path("groups", name)
            if problem := name_problem(name, "group name"):
                self.add(path, problem)
            elif name == "all":
                self.add(path, "'all' is reserved: it means every host (shared vars: defaults)")
            else:
                groups[name] = self.group(body, path)
        self.check_children(groups)
        hosts = {h for group in groups.values() for h in group.hosts}
        for name in groups:
            if name in hosts:
                self.add(join_path("groups", name), f"{name!r} names both a group and a host")
        return groups

    def group(self, body: Any, path: str) -> GroupSpec:
        group = GroupSpec()
        if body is not None and not isinstance(body, dict):
            keys = ", ".join(GROUP_KEYS)
            self.add(path, f"expected a mapping with keys {keys}, got {show_value(body)}")
            return group
        body = body or {}
        self.unknown_keys(body, path, GROUP_KEYS)
        group.vars = self.host_vars(body.get("vars"), path + ".vars")
        if "queue" in body:
            if "queue" in group.vars:
                self.add(path + ".queue", "queue is set both here and in vars")
            group.vars.update(self.host_vars({"queue": body["queue"]}, path))
        children = body.get("children")
        if children is not None and not isinstance(children, list):
            self.add(
                path + ".children", f"expected a list of group names, got {show_value(children)}"
            )
        for child in children if isinstance(children, list) else ():
            if not isinstance(child, str):
                self.add(path + ".children", f"expected a group name, got {show_value(child)}")
            elif child in group.children:
                self.add(path + ".children", f"group {child!r} listed twice")
            else:
                group.children.append(child)
        if self.expand:
            self.group_hosts(body.get("hosts"), path + ".hosts", group)
        return group

    def count_hosts(self, raw: dict[Any, Any]) -> bool:
        """Whether the hosts the groups list, counted without expanding a range, stay
        within `MAX_HOSTS`; if not, one problem names the largest listing."""
        total, worst = 0, (0, "", "", 0)  # (hosts in a group, its path, largest key, its size)
        sizes: dict[str, int] = {}  # an alias repeats keys: count each text once
        for name, body in raw.items():
            hosts = body.get("hosts") if isinstance(body, dict) else None
            if not isinstance(hosts, dict):
                continue
            here, big_key, big = 0, "", 0
            for key in hosts:
                if not isinstance(key, str):
                    continue  # group_hosts reports it
                if (size := sizes.get(key)) is None:
                    try:
                        size = count_range(key)  # 1 for a plain name
                    except PatternError:
                        size = 0  # group_hosts reports it
                    sizes[key] = size
                here += size
                if size > big:
                    big_key, big = key, size
            total += here
            if here > worst[0]:
                worst = (here, join_path(join_path("groups", name), "hosts"), big_key, big)
        if total <= MAX_HOSTS:
            return True
        here, path, key, big = worst
        if big > MAX_HOSTS:
            self.add(
                path, f"{show_value(key)} expands to {_shown_count(big)} hosts (limit {MAX_HOSTS})"
            )
        else:
            self.add(path, f"lists {here} hosts once ranges are expanded, "
                     f"{_shown_count(total)} in the whole file (limit {MAX_HOSTS})")  # fmt: skip
        return False

    def group_hosts(self, raw: Any, path: str, group: GroupSpec) -> None:
        origin: dict[str, str] = {}
        twice: dict[tuple[str, str], list[str]] = {}
        for key, value in self.mapping(raw, path, "host names to host vars").items():
            where = join_path(path, key)
            if not isinstance(key, str):
                self.add(where, f"host names must be strings, got {show_value(key)} (quote it)")
                continue
            try:
                names = expand_hosts(key)
            except PatternError as exc:
                self.add(where, str(exc))
                continue
            host_vars = self.host_vars(value, where)
            for name in names:
                if name in group.hosts:
                    twice.setdefault((origin[name], key), []).append(name)
                else:
                    group.hosts[name] = host_vars
                    origin[name] = key
        for (first, second), names in twice.items():
            what = (
                f"{show_value(first)} and {show_value(second)}"
                if first != second
                else show_value(first)
            )
            self.add(path, f"host {fold_hosts(names)} listed twice ({what})")

    def check_children(self, groups: dict[str, GroupSpec]) -> None:
        known = ", ".join(sorted(groups))
        for name, group in groups.items():
            for child in group.children:
                if child not in groups:
                    where = f"groups.{name}.children"
                    self.add(where, f"unknown group {child!r} (known: {known})")
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        reported: set[frozenset[str]] = set()
        for start in groups:
            if start in state:
                continue
            path = [start]
            stack = [iter(groups[start].children)]
            state[start] = 1
            while stack:
                nxt = next(stack[-1], None)
                if nxt is None:
                    stack.pop()
                    state[path.pop()] = 2
                elif nxt in groups and nxt not in state:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append(iter(groups[nxt].children))
                elif state.get(nxt) == 1:
                    cycle = [*path[path.index(nxt) :], nxt]
                    if frozenset(cycle) not in reported:
                        reported.add(frozenset(cycle))
                        self.add(f"groups.{nxt}.children", "cycle " + " -> ".join(cycle))

    def schedules(self, raw: Any) -> dict[str, Schedule]:
        schedules: dict[str, Schedule] = {}
        for name, body in self.mapping(raw, "schedules", "schedule names to schedules").items():
            schedule = check_schedule(name, body, join_path("schedules", name), self.add)
            if schedule is not None:
                schedules[schedule.name] = schedule
        return schedules


def _shown_count(count: int) -> str:
    return str(count) if count <= COUNT_CAP else f"more than {COUNT_CAP}"
