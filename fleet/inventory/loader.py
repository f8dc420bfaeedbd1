"""The inventory: load and validate ``inventory.yaml``, resolve patterns to `Host` values.

Knows nothing of Celery, SSH or Redis (a test checks that importing it imports none).
Format: top-level keys ``defaults``, ``groups`` and ``schedules``, nothing else (the
commented ``inventory.yaml`` at the top of the repository shows each of them). Ansible's
INI and YAML inventories load too (`fleet.inventory.formats` tells them apart), with
Ansible's ``all`` vars as defaults and its variable names kept until the end.

Variable precedence, lowest first; a later layer replaces a variable whole (an
``env`` mapping too, like Ansible's default ``hash_behaviour=replace``):

1. ``defaults``;
2. the ``vars`` (and ``queue``) of every group the host belongs to, directly or
   through ``children``, applied by group depth, then group name. A group's depth is
   0 without a parent, else one more than its deepest parent's, so a parent always
   comes before its children; unrelated groups of one depth go by name, so the result
   never depends on the order of the file;
3. the host's own vars; a host listed in several groups gets each listing's vars in
   that same group order.

``address`` defaults to the host name and ``port`` to 22. ``Host.groups`` lists all
the host's groups (parents through ``children`` included) in that order.

Loading reports every problem at once in one `InventoryError`, each with its key path.
YAML is read with safe constructors only; a file that is too large, too deeply
nested or whose aliases expand too far is refused before anything walks it, and one
whose ranges, children or variables resolve to too much before they are expanded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fleet.errors import InventoryError, InventoryProblem, PatternError
from fleet.inventory.ansible_vars import host_from_ansible
from fleet.inventory.formats import Format, read_spec
from fleet.inventory.hosts import DEFAULT_PORT, KNOWN_HOST_VARS, Host
from fleet.inventory.noderange import expand_hosts, fold_hosts
from fleet.inventory.patterns import resolve_pattern
from fleet.inventory.safe_yaml import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from fleet.inventory.schedules import Schedule
from fleet.inventory.schema import (
    MAX_HOSTS,
    GroupSpec,
    InventorySpec,
    join_path,
)
from fleet.inventory.sizes import ResolvedSize
from fleet.settings import DEFAULTS

__all__ = [
    "IMPLICIT_LOCALHOST",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_HOSTS",
    "MAX_NODES",
    "Inventory",
    "Schedule",
    "expand_hosts",
    "fold_hosts",
    "load_inventory",
    "parse_inventory",
]

# What resolving builds, bounded before it is built (MAX_HOSTS bounds the listings):
MAX_MEMBERSHIPS = 1_000_000  # (host, group) pairs, children's parents included
MAX_HOST_VALUES = 5_000_000  # variables over all hosts, after precedence

#: Selected by the pattern ``localhost`` when the inventory has no host of that name
#: (or there is no inventory file at all), as Ansible's implicit localhost.
IMPLICIT_LOCALHOST = Host(name="localhost", address="localhost", connection="local")

HostMaker = Callable[[str, dict[str, Any], tuple[str, ...]], Host]


@dataclass(frozen=True, slots=True)
class Inventory:
    """Validated hosts and groups. Build it with `load_inventory` or `parse_inventory`."""

    source: str
    hosts: tuple[Host, ...]  # in order of first appearance in the file
    groups: tuple[str, ...]  # in file order
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
    members: Mapping[str, frozenset[str]] = field(default_factory=dict)  # children's too
    format: Format = Format.FLEET  # the file's format (fleet.inventory.formats)
    _by_name: Mapping[str, Host] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedules", MappingProxyType(dict(self.schedules)))
        object.__setattr__(self, "members", MappingProxyType(dict(self.members)))
        object.__setattr__(self, "_by_name", MappingProxyType({h.name: h for h in self.hosts}))

    def host(self, name: str) -> Host:
        """The host named `name`. Raises `PatternError` when there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise PatternError(f"no host named {name!r} in {self.source}") from None

    def select(self, pattern: str) -> tuple[Host, ...]:
        """The hosts `pattern` selects, each once, in inventory order.

        The pattern ``localhost``, when no host has that name, selects
        `IMPLICIT_LOCALHOST`. Raises `PatternError` when a term names nothing or nothing
        is selected.
        """
        if pattern.strip() == IMPLICIT_LOCALHOST.name and IMPLICIT_LOCALHOST.name not in (
            self._by_name.keys() | self.members.keys()
        ):
            return (IMPLICIT_LOCALHOST,)
        names = resolve_pattern(pattern, self.members, self._by_name.keys())
        if not names:
            raise PatternError(f"pattern {pattern!r} matched no hosts")
        return tuple(h for h in self.hosts if h.name in names)

    def check_pattern(self, pattern: str) -> None:
        """Raise `PatternError` when `pattern` is malformed or a term names nothing known.

        An empty selection passes: a schedule's group may be empty now and filled later
        (it is resolved when the schedule fires).
        """
        resolve_pattern(pattern, self.members, self._by_name.keys())


def load_inventory(path: str | Path, *, max_bytes: int = DEFAULTS.inventory_max_bytes) -> Inventory:
    """Read and validate the inventory file at `path`.

    Raises `InventoryError` naming the file for a missing or unreadable file, one
    larger than 16 MiB, and every problem in its content (`parse_inventory`).
    """
    source = str(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)  # a cap, even for /dev/zero
    except FileNotFoundError:
        hint = "no such file (name the inventory with -i PATH or FLEET_INVENTORY)"
        raise InventoryError(source, InventoryProblem("", hint)) from None
    except OSError as exc:
        raise InventoryError(source, InventoryProblem("", f"cannot read: {exc.strerror}")) from exc
    if len(data) > MAX_FILE_BYTES:
        raise InventoryError(source, InventoryProblem("", "file is larger than 16 MiB"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = InventoryProblem("", f"not UTF-8 text (byte {exc.start})")
        raise InventoryError(source, problem) from None
    return parse_inventory(text, source, max_bytes=max_bytes)


def select_hosts(
    path: str | Path,
    pattern: str,
    *,
    max_bytes: int = DEFAULTS.inventory_max_bytes,
    implicit_file: bool = False,
) -> tuple[Host, ...]:
    """The hosts `pattern` selects in the inventory at `path` (`Inventory.select`).

    With `implicit_file` (the path is the default, not one the user named) a missing
    file is an empty inventory for the pattern ``localhost`` (`IMPLICIT_LOCALHOST`), as
    Ansible runs ``ansible localhost`` without an inventory. Raises `InventoryError`
    (for another pattern, the missing file, with how to name one), `PatternError`.
    """
    if implicit_file and not os.path.lexists(path):
        if pattern.strip() == IMPLICIT_LOCALHOST.name:
            return (IMPLICIT_LOCALHOST,)
        hint = (
            "no such file: name the inventory with -i PATH or FLEET_INVENTORY "
            "(the pattern 'localhost' needs none: connection local, as Ansible's "
            "implicit localhost)"
        )
        raise InventoryError(str(path), InventoryProblem("", hint))
    return load_inventory(path, max_bytes=max_bytes).select(pattern)


def parse_inventory(
    text: str, source: str, *, max_bytes: int = DEFAULTS.inventory_max_bytes
) -> Inventory:
    """Validate inventory YAML `text`; `source` names it in messages.

    Raises `InventoryError` carrying every problem found, or naming the key path that
    weighs most when the resolved hosts would carry more than `max_bytes` bytes of
    variable values in all (`fleet.inventory.sizes`; 0: no limit).
    """
    problems: list[InventoryProblem] = []
    kind, spec = read_spec(text, source, problems)  # fleet's YAML, Ansible's YAML or INI
    if problems:
        raise InventoryError(source, problems)
    maker = _make_host if kind is Format.FLEET else host_from_ansible
    inventory = _assemble(source, spec, max_bytes, maker, kind)
    for schedule in spec.schedules.values():
        try:
            inventory.check_pattern(schedule.group)
        except PatternError as exc:
            problems.append(InventoryProblem(f"schedules.{schedule.name}.group", str(exc)))
    if problems:
        raise InventoryError(source, problems)
    return inventory


def _assemble(
    source: str, spec: InventorySpec, max_bytes: int, make_host: HostMaker, kind: Format
) -> Inventory:
    """Apply precedence (see the module docstring) to checked, acyclic groups; Ansible's
    variables become `Host` fields only then (`host_from_ansible`), as Ansible reads
    them from a host's final variables."""
    defaults, groups = spec.defaults, spec.groups
    depth, lineage = _lineages(source, groups)
    rank = {name: i for i, name in enumerate(sorted(groups, key=lambda g: (depth[g], g)))}
    direct: dict[str, list[str]] = {}
    for name, group in groups.items():
        for host in group.hosts:
            direct.setdefault(host, []).append(name)
    _check_size(source, spec, lineage)
    base_cache: dict[tuple[str, ...], dict[str, Any]] = {}
    members: dict[str, set[str]] = {name: set() for name in groups}
    hosts = []
    weight = ResolvedSize()
    for host, own in direct.items():
        chain = tuple(sorted(frozenset().union(*(lineage[g] for g in own)), key=rank.__getitem__))
        base = base_cache.get(chain)
        if base is None:
            base = dict(defaults)
            for name in chain:
                base.update(groups[name].vars)
            base_cache[chain] = base
            layers = [(join_path(join_path("groups", g), "vars"), groups[g].vars) for g in chain]
            weight.base(chain, [("defaults", defaults), *layers])
        values = dict(base)
        listings = [(g, groups[g].hosts[host]) for g in sorted(own, key=rank.__getitem__)]
        for _, listed in listings:
            values.update(listed)
        weight.host(chain, [(_host_path(g, host), listed) for g, listed in listings])
        for name in chain:
            members[name].add(host)
        hosts.append(make_host(host, values, chain))
    weight.check(source, max_bytes)
    frozen = {name: frozenset(names) for name, names in members.items()}
    return Inventory(source, tuple(hosts), tuple(groups), spec.schedules, frozen, kind)


def _host_path(group: str, host: str) -> str:
    return join_path(join_path(join_path("groups", group), "hosts"), host)


def _lineages(
    source: str, groups: Mapping[str, GroupSpec]
) -> tuple[dict[str, int], dict[str, frozenset[str]]]:
    """Each group's depth and lineage (itself and all its ancestors), parents first.

    Raises `InventoryError` when the lineages would hold more than `MAX_MEMBERSHIPS`
    names in all (a long chain or a wide lattice of children), before building them.
    """
    parents: dict[str, list[str]] = {name: [] for name in groups}
    for name, group in groups.items():
        for child in group.children:
            parents[child].append(name)
    waiting = {name: len(names) for name, names in parents.items()}
    order = [name for name, count in waiting.items() if not count]
    depth: dict[str, int] = {}
    lineage: dict[str, frozenset[str]] = {}
    cost = 0
    for name in order:  # grows as groups settle: a topological order (checked acyclic)
        cost += 1 + sum(len(lineage[p]) for p in parents[name])
        if cost > MAX_MEMBERSHIPS:
            message = (
                f"children nest too deep or too wide: more than {MAX_MEMBERSHIPS} "
                "group-in-group memberships in the file"
            )
            raise InventoryError(source, InventoryProblem(join_path("groups", name), message))
        depth[name] = 1 + max((depth[p] for p in parents[name]), default=-1)
        lineage[name] = frozenset([name]).union(*(lineage[p] for p in parents[name]))
        for child in groups[name].children:
            waiting[child] -= 1
            if not waiting[child]:
                order.append(child)
    return depth, lineage


def _check_size(source: str, spec: InventorySpec, lineage: Mapping[str, frozenset[str]]) -> None:
    """Raise `InventoryError` when the resolved hosts would be too big to build.

    Counted per group from what the file states: host-group memberships (a host in a
    group of 200 parents is in 201 groups) and the variables every host would carry.
    """
    memberships = values = 0
    worst = (0, "", "")
    for name, group in spec.groups.items():
        here = len(group.hosts) * len(lineage[name])
        memberships += here
        shared = len(spec.defaults) + sum(len(spec.groups[g].vars) for g in lineage[name])
        values += len(group.hosts) * shared + sum(map(len, group.hosts.values()))
        if here > worst[0]:
            what = f"its {len(group.hosts)} hosts are each in {len(lineage[name])} groups"
            worst = (here, join_path(join_path("groups", name), "hosts"), what)
    if memberships > MAX_MEMBERSHIPS:
        message = (
            f"{worst[2]} (with the parents through children): {memberships} host-group "
            f"memberships in the file (limit {MAX_MEMBERSHIPS})"
        )
        raise InventoryError(source, InventoryProblem(worst[1], message))
    if values > MAX_HOST_VALUES:
        message = (
            f"hosts would carry {values} variables in all once defaults and group vars "
            f"are applied (limit {MAX_HOST_VALUES})"
        )
        raise InventoryError(source, InventoryProblem("", message))


def _make_host(name: str, values: dict[str, Any], groups: tuple[str, ...]) -> Host:
    known = {k: v for k, v in values.items() if k in KNOWN_HOST_VARS}
    free = {k: v for k, v in values.items() if k not in KNOWN_HOST_VARS}
    address = known.pop("address", name)
    port = known.pop("port", DEFAULT_PORT)
    explicit = frozenset(values) & KNOWN_HOST_VARS  # these win over ~/.ssh/config
    return Host(
        name=name,
        address=address,
        port=port,
        vars=free,
        groups=groups,
        explicit=explicit,
        **known,
    )
