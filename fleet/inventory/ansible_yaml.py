"""Ansible's YAML inventory format, walked as ansible-core's ``plugins/inventory/yaml.py``
walks it, without importing Ansible. The YAML itself is read by fleet's safe composer
(`fleet.inventory.safe_yaml`) like any inventory.

    all:
      vars: {ansible_user: deploy}
      hosts: {bastion: {ansible_host: 10.0.0.1}}
      children:
        web:
          hosts:
            web[01:04]: {}
            web05: {ansible_port: 2222}
          vars: {http_port: 8080}
        prod: {children: {web: {}}}

Top-level keys are groups (usually just ``all``); a group is a mapping of ``hosts``
(host pattern -> variables or null), ``children`` (group name -> group, defined there
or elsewhere) and ``vars``, each a mapping, null, or one name (``hosts: web1``, which
Ansible reads as ``{web1: null}``). Where Ansible warns and skips (another key, a
section that is not a mapping), fleet reports a problem: nothing is silently dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleet.errors import InventoryProblem
from fleet.inventory.schema import TOP_KEYS, InventorySpec, join_path
from fleet.textsafe import show_value

if TYPE_CHECKING:
    from fleet.inventory.ansible_model import AnsibleModel

SECTIONS = ("children", "hosts", "vars")


def is_ansible_yaml(data: Any) -> bool:
    """Whether loaded YAML has Ansible's shape rather than fleet's: a top-level ``all``,
    or no fleet key (``defaults``, ``groups``, ``schedules``) and every top-level value a
    group (a mapping of ``hosts``/``children``/``vars``, or null)."""
    if not isinstance(data, dict) or not data:
        return False
    if "all" in data:
        return True
    if any(key in TOP_KEYS for key in data):
        return False
    return all(
        body is None or (isinstance(body, dict) and body and set(body) <= set(SECTIONS))
        for body in data.values()
    )


def check_ansible_yaml(data: dict[Any, Any], problems: list[InventoryProblem]) -> InventorySpec:
    """The `InventorySpec` of Ansible YAML `data`; each problem appended to `problems`
    with its key path (``all.children.web.hosts.web01.ansible_port``).

    Ansible's model is imported here: `is_ansible_yaml` decides for every YAML
    inventory, fleet's own included, and needs none of it."""
    from fleet.inventory.ansible_model import AnsibleModel

    model = AnsibleModel(problems)
    for name, body in data.items():
        _group(model, name, body, join_path("", name))
    return model.spec()


def _group(model: AnsibleModel, name: Any, body: Any, path: str) -> str | None:
    """Read group `name` (its vars, children and hosts, in file order); its name, or
    None when it cannot be a group."""
    if body is not None and not isinstance(body, dict):
        model.add(path, f"expected a group (a mapping of {', '.join(SECTIONS)}), "
                  f"got {show_value(body)}")  # fmt: skip
        return None
    if model.group(name, path) is None:
        return None
    for key, section in (body or {}).items():
        where = join_path(path, key)
        if key not in SECTIONS:
            model.add(where, f"unknown key {show_value(key)} (allowed: {', '.join(SECTIONS)})")
            continue
        if isinstance(section, str):
            section = {section: None}  # Ansible reads one name as a mapping to null
        if section is None:
            continue
        if not isinstance(section, dict):
            model.add(where, f"expected a mapping, got {show_value(section)}")
        elif key == "vars":
            model.set_group_vars(name, section, where)
        elif key == "children":
            for child, child_body in section.items():
                child_name = _group(model, child, child_body, join_path(where, child))
                if child_name is not None:
                    model.add_child(name, child_name, join_path(where, child))
        else:
            for pattern, host_vars in section.items():
                host_path = join_path(where, pattern)
                if host_vars is not None and not isinstance(host_vars, dict):
                    model.add(host_path, f"expected a mapping of variables, "
                              f"got {show_value(host_vars)}")  # fmt: skip
                    continue
                model.add_hosts(pattern, name, host_vars or {}, host_path)
    return str(name)
