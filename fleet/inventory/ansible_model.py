"""An Ansible inventory as Ansible builds it, turned into fleet's `InventorySpec`.

The INI and YAML readers (`fleet.inventory.ansible_ini`, `fleet.inventory.ansible_yaml`)
feed an `AnsibleModel` with what they read, in file order; it follows the rules of
ansible-core's ``InventoryData`` (``inventory/data.py``):

- groups ``all`` and ``ungrouped`` always exist; every group is under ``all``; ``all``'s
  vars are fleet's ``defaults``;
- a host's own variables are merged in file order (a later listing's value wins), and
  a ``host:port`` pattern sets ``ansible_port`` when the host is first seen;
- ``ungrouped`` holds the hosts in no group but ``all`` and ``ungrouped``;
- group variables apply by group depth, then name (fleet's own rule, and Ansible's with
  no ``ansible_group_priority``); the host's own variables win.

Host patterns use Ansible's ranges: ``web[01:20]``, ``db-[a:f]``, ``node[1:9:2]``, and
``host:port``. Every problem is collected with its place, as for fleet's own format.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import InventoryProblem
from fleet.inventory.ansible_vars import ansible_var_problem
from fleet.inventory.noderange import MAX_RANGE_HOSTS, name_problem
from fleet.inventory.schema import MAX_HOSTS, SECRET_KEYS, GroupSpec, InventorySpec, join_path
from fleet.textsafe import show_value

_BRACKETED_PORT = re.compile(r"\[(.+)\]:([0-9]+)\Z")
_HOST_PORT = re.compile(r"((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)\Z")
# Ansible's parse_address: a host name (labels with ranges) or an IPv4 address; a
# pattern that is neither keeps its ":NN" as part of the name.
_RANGE = r"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_LABEL = rf"(?:[\w]|{_RANGE})(?:[\w_-]|{_RANGE})*(?<![_-])"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z", re.I)
_IPV4 = re.compile(r"(?:(?:[0-9]{1,3}|\[[0-9]+:[0-9]+(?::[0-9]+)?\])\.){3}"
                   r"(?:[0-9]{1,3}|\[[0-9]+:[0-9]+(?::[0-9]+)?\])\Z")  # fmt: skip


def split_port(pattern: str) -> tuple[str, int | None]:
    """``web[01:04]:2222`` -> (``web[01:04]``, 2222), as Ansible's parse_address."""
    text, port = pattern, None
    for regex in (_BRACKETED_PORT, _HOST_PORT):
        if match := regex.match(text):
            text, port = match.group(1), int(match.group(2))
    if _NAME.match(text) or _IPV4.match(text):
        return text, port
    return pattern, None


def _bracket(body: str) -> tuple[str, list[str] | range, int]:
    """One ``[begin:end(:step)]`` range: (fill mode, sequence, width). Raises ValueError."""
    bounds = body.split(":")
    if len(bounds) not in (2, 3):
        raise ValueError("host range must be begin:end or begin:end:step")
    begin, end = bounds[0] or "0", bounds[1]
    if not end:
        raise ValueError("host range must specify an end value")
    step = int(bounds[2]) if len(bounds) == 3 and bounds[2].isdigit() else 1
    if len(bounds) == 3 and (not bounds[2].isdigit() or step == 0):
        raise ValueError("host range step must be a positive integer")
    width = len(begin) if begin[0] == "0" and len(begin) > 1 else 0
    if width and len(end) != width:
        raise ValueError("host range must specify equal-length begin and end formats")
    letters = string.ascii_letters
    if len(begin) == 1 and len(end) == 1 and begin in letters and end in letters:
        if letters.index(begin) > letters.index(end):
            raise ValueError("host range must have begin <= end")
        return "alpha", list(letters[letters.index(begin) : letters.index(end) + 1 : step]), 0
    if not (begin.isdigit() and end.isdigit()):
        raise ValueError(f"[{body}] is not a range of numbers or of letters")
    return "number", range(int(begin), int(end) + 1, step), width


def expand_pattern(pattern: str) -> list[str]:
    """The names an Ansible host pattern (port already split off) stands for, in
    Ansible's order. Raises ValueError for a malformed range or more than
    `MAX_RANGE_HOSTS` names (counted before anything is expanded)."""
    parts: list[str] = []  # literal, then a bracket body, alternately
    rest = pattern
    while "[" in rest:
        head, _, tail = rest.partition("[")
        body, closed, rest = tail.partition("]")
        if not closed or "[" in body:
            raise ValueError("unbalanced brackets")
        parts += [head, body]
    if "]" in rest:
        raise ValueError("unbalanced brackets")
    ranges = [_bracket(body) for body in parts[1::2]]
    count = 1
    for _, seq, _ in ranges:
        count *= len(seq)
        if count > MAX_RANGE_HOSTS:
            raise ValueError(f"expands to more than {MAX_RANGE_HOSTS} hosts")
    names = [""]
    for head, (_, seq, width) in zip(parts[0::2], ranges, strict=True):
        items = [str(i).zfill(width) if width else str(i) for i in seq]
        names = [name + head + item for name in names for item in items]
    return [name + rest for name in names]


@dataclass(slots=True)
class _Group:
    vars: dict[str, Any] = field(default_factory=dict)
    children: dict[str, str] = field(default_factory=dict)  # child -> where it was added
    hosts: dict[str, None] = field(default_factory=dict)  # direct members, in order


class AnsibleModel:
    """Groups, hosts and variables as an Ansible inventory file states them."""

    def __init__(self, problems: list[InventoryProblem]) -> None:
        self.problems = problems
        self.groups: dict[str, _Group] = {"all": _Group(), "ungrouped": _Group()}
        self.hosts: dict[str, dict[str, Any]] = {}  # name -> own vars, merged in file order
        self.listed = 0  # hosts listed so far, ranges expanded (MAX_HOSTS)

    def add(self, where: str, message: str) -> None:
        self.problems.append(InventoryProblem(where, message))

    def group(self, name: Any, where: str) -> _Group | None:
        """The group `name`, created when new; None (and a problem) for a bad name."""
        if name in self.groups:
            return self.groups[name]
        if problem := name_problem(name, "group name"):
            self.add(where, problem)
            return None
        return self.groups.setdefault(name, _Group())

    def checked_vars(self, raw: dict[Any, Any], where: str) -> dict[str, Any]:
        """The variables of `raw` that can be used; a problem for each other one."""
        checked = {}
        for key, value in raw.items():
            path = join_path(where, key)
            if not isinstance(key, str) or not key:
                self.add(path, f"variable names must be non-empty strings, got {show_value(key)}")
            elif key in SECRET_KEYS:
                self.add(path, "no secrets in the inventory: it travels in task messages "
                         "(fleet reads passwords from the workers' environment)")  # fmt: skip
            elif problem := ansible_var_problem(key, value):
                self.add(path, problem)
            else:
                checked[key] = value
        return checked

    def set_group_vars(self, name: str, raw: dict[Any, Any], where: str) -> None:
        group = self.groups.get(name)
        if group is not None:
            group.vars.update(self.checked_vars(raw, where))

    def add_hosts(self, pattern: Any, group: str, raw_vars: dict[Any, Any], where: str) -> None:
        """List the hosts of `pattern` (ranges, ``:port``) in `group` with their vars."""
        if not isinstance(pattern, str):
            self.add(where, f"host names must be strings, got {show_value(pattern)} (quote it)")
            return
        text, port = split_port(pattern.strip())
        try:
            names = expand_pattern(text) if "[" in text or "]" in text else [text]
        except ValueError as exc:
            self.add(where, f"bad host range {show_value(pattern)}: {exc}")
            return
        self.listed += len(names)
        if self.listed > MAX_HOSTS:
            if self.listed - len(names) <= MAX_HOSTS:
                self.add(where, f"more than {MAX_HOSTS} hosts listed once ranges are expanded")
            return
        bad = [problem for name in names[:1] + names[-1:] if (problem := name_problem(name))]
        if bad:
            self.add(where, bad[0])
            return
        values = self.checked_vars(raw_vars, where)
        members = self.groups[group].hosts
        for name in names:
            if name not in self.hosts:
                self.hosts[name] = {} if port is None else {"ansible_port": port}
            self.hosts[name].update(values)
            members[name] = None

    def add_child(self, parent: str, child: str, where: str) -> None:
        if child == "all":
            self.add(where, "'all' cannot be a child group: every group is under it")
        elif child == parent:
            self.add(where, f"group {child!r} cannot be its own child")
        elif parent != "all":
            self.groups[parent].children.setdefault(child, where)

    def spec(self) -> InventorySpec:
        """fleet's `InventorySpec` for the model: ``all``'s vars as defaults, ``ungrouped``
        as Ansible reconciles it, every listing carrying the host's merged variables."""
        self._check_cycles()
        grouped = {h for name, g in self.groups.items() if name not in ("all", "ungrouped")
                   for h in g.hosts}  # fmt: skip
        listed = {**self.groups["all"].hosts, **self.groups["ungrouped"].hosts}
        self.groups["ungrouped"].hosts = {h: None for h in self.hosts if h in listed}
        for name in grouped:
            self.groups["ungrouped"].hosts.pop(name, None)
        groups: dict[str, GroupSpec] = {}
        for name, group in self.groups.items():
            if name == "all":
                continue
            if name in self.hosts:
                self.add(name, f"{name!r} names both a group and a host")
            groups[name] = GroupSpec(
                hosts={h: self.hosts[h] for h in group.hosts},
                vars=dict(group.vars),
                children=list(group.children),
            )
        return InventorySpec(dict(self.groups["all"].vars), groups, {})

    def _check_cycles(self) -> None:
        """Report each cycle of children once, as ``a -> b -> a``, where it closes."""
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        for start in self.groups:
            path: list[str] = []
            stack = [iter([start])]
            while stack:
                child = next(stack[-1], None)
                if child is None:
                    stack.pop()
                    if path:
                        state[path.pop()] = 2
                elif state.get(child) == 1:
                    cycle = [*path[path.index(child) :], child]
                    where = self.groups[path[-1]].children[child]
                    self.add(where, "cycle " + " -> ".join(cycle))
                    del self.groups[path[-1]].children[child]  # reported: break it
                elif child not in state and child in self.groups:
                    state[child] = 1
                    path.append(child)
                    stack.append(iter(list(self.groups[child].children)))
