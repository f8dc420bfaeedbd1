"""Ansible's INI inventory format, read as ansible-core's ``plugins/inventory/ini.py``
reads it, without importing Ansible.

- Lines are stripped; empty lines and lines starting with ``#`` or ``;`` are skipped.
- ``[group]`` lists hosts, ``[group:children]`` group names, ``[group:vars]`` one
  ``key=value`` per line (everything after the first ``=`` is the value). Hosts before
  any section are in ``ungrouped``. A section header may end with a ``#`` comment.
- A host line is split as a shell would (``shlex``, ``#`` starts a comment): the host
  pattern (``web[01:20]``, ``db-[a:c]``, ``node[1:9:2]``, ``web1:2222``), then
  ``key=value`` words.
- Values are typed by `fleet.inventory.ansible_vars.parse_ini_value` (Python literals,
  else text), in host lines and ``:vars`` sections alike, as Ansible does.
- A group named in ``[x:children]`` or given ``[g:vars]`` must have its own ``[g]`` or
  ``[g:children]`` section somewhere in the file (``all`` and ``ungrouped`` always exist).

Every problem is collected with its line: ``line 7: web.hosts.web01.ansible_port: ...``.
"""

from __future__ import annotations

import re
import shlex

from fleet.errors import InventoryProblem
from fleet.inventory.ansible_model import AnsibleModel
from fleet.inventory.ansible_vars import parse_ini_value
from fleet.inventory.schema import InventorySpec, join_path
from fleet.textsafe import show_value

# ini.py's patterns: a group name is anything but ':', ']' and whitespace
_SECTION = re.compile(r"\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?\Z")
_GROUP_NAME = re.compile(r"([^:\]\s]+)\s*(?:#.*)?\Z")
_COMMENT = ("#", ";")


def parse_ini(text: str, problems: list[InventoryProblem]) -> InventorySpec:
    """The `InventorySpec` of Ansible INI `text`; each problem appended to `problems`."""
    return _IniReader(problems).read(text)


class _IniReader:
    def __init__(self, problems: list[InventoryProblem]) -> None:
        self.model = AnsibleModel(problems)
        self.declared: set[str] = {"all", "ungrouped"}  # by [g] or [g:children]
        self.wanted: dict[str, str] = {}  # group -> where it was first needed
        self.children: list[tuple[str, str, str]] = []  # (parent, child, where)

    def read(self, text: str) -> InventorySpec:
        group: str | None = "ungrouped"
        state = "hosts"
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith(_COMMENT):
                continue
            where = f"line {number}"
            if line.startswith("["):
                group, state = self.section(line, where)
            elif group is None:
                continue  # under a bad header: reported once, there
            elif state == "hosts":
                self.host_line(line, group, where)
            elif state == "vars":
                self.var_line(line, group, where)
            else:
                self.child_line(line, group, where)
        for parent, child, where in self.children:
            if child in self.declared:
                self.model.add_child(parent, child, where)
        for name, where in self.wanted.items():
            if name not in self.declared:
                self.model.add(where, f"group {name!r} is used but has no [{name}] or "
                               f"[{name}:children] section")  # fmt: skip
        return self.model.spec()

    def section(self, line: str, where: str) -> tuple[str | None, str]:
        match = _SECTION.match(line)
        if match is None:
            expected = "[group], [group:children] or [group:vars], with no spaces"
            self.model.add(where, f"invalid section header {show_value(line)} ({expected})")
            return None, ""
        name, kind = match.group(1), match.group(2) or "hosts"
        if kind not in ("hosts", "children", "vars"):
            self.model.add(where, f"section [{name}:{kind}]: unknown type {kind!r} "
                           "(expected children or vars)")  # fmt: skip
            return None, ""
        if self.model.group(name, where) is None:
            return None, ""
        if kind == "vars":
            self.wanted.setdefault(name, where)
        else:
            self.declared.add(name)
        return name, kind

    def host_line(self, line: str, group: str, where: str) -> None:
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            self.model.add(where, f"cannot split host line {show_value(line)}: {exc}")
            return
        if not words:
            return
        pattern, assignments = words[0], words[1:]
        path = f"{where}: {join_path(join_path(group, 'hosts'), pattern)}"
        if pattern.endswith(":"):
            self.model.add(path, "a host name cannot end with ':' (it introduces a port)")
            return
        variables = {}
        for word in assignments:
            key, equals, value = word.partition("=")
            if not equals:
                self.model.add(
                    path, f"expected key=value after the host name, got {show_value(word)}"
                )
                return
            variables[key] = parse_ini_value(value)
        self.model.add_hosts(pattern, group, variables, path)

    def var_line(self, line: str, group: str, where: str) -> None:
        key, equals, value = line.partition("=")
        key = key.strip()
        path = f"{where}: {join_path(join_path(group, 'vars'), key)}"
        if not equals:
            self.model.add(path, f"expected key=value, got {show_value(line)}")
            return
        parsed = parse_ini_value(value.strip())
        self.model.set_group_vars(group, {key: parsed}, f"{where}: {join_path(group, 'vars')}")

    def child_line(self, line: str, group: str, where: str) -> None:
        match = _GROUP_NAME.match(line)
        path = f"{where}: {join_path(group, 'children')}"
        if match is None:
            self.model.add(path, f"expected a group name, got {show_value(line)}")
            return
        child = match.group(1)
        if self.model.group(child, path) is not None:
            self.wanted.setdefault(child, where)
            self.children.append((group, child, path))
