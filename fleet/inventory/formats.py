"""Which format an inventory file is in, and its `InventorySpec`.

Three formats load as they are:

- fleet's own YAML (top-level ``defaults``, ``groups``, ``schedules``);
- Ansible's YAML (top-level ``all:`` with ``hosts``/``children``/``vars``, or only such
  groups): `fleet.inventory.ansible_yaml`;
- Ansible's INI (``[group]``, ``[group:children]``, ``[group:vars]``):
  `fleet.inventory.ansible_ini`.

By name first: ``.ini`` is INI; ``.yaml``, ``.yml`` and ``.json`` are YAML (then the
shape decides between fleet's and Ansible's, `is_ansible_yaml`). Any other name
(``hosts``, no extension): INI when its first line that is not a comment is a
``[section]`` header or when it is not a YAML mapping (a list of host names reads as
one YAML string); a file that is not YAML at all is INI if it reads as INI without a
problem, otherwise its YAML error is reported.

The INI reader is imported only for a file read as INI, and Ansible's model
(`fleet.inventory.ansible_model`) only for an Ansible file: loading fleet's own format
costs neither.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import PurePath
from typing import Any

from fleet.errors import InventoryError, InventoryProblem
from fleet.inventory.ansible_yaml import check_ansible_yaml, is_ansible_yaml
from fleet.inventory.safe_yaml import read_yaml
from fleet.inventory.schema import InventorySpec, check_inventory

_YAML_SUFFIXES = (".yaml", ".yml", ".json")


class Format(StrEnum):
    FLEET = "fleet"
    ANSIBLE_YAML = "ansible-yaml"
    ANSIBLE_INI = "ansible-ini"


def read_spec(
    text: str, source: str, problems: list[InventoryProblem]
) -> tuple[Format, InventorySpec]:
    """The format of inventory `text` (named `source`) and its checked content; each
    problem appended to `problems`. Raises `InventoryError` for YAML that cannot be read.
    """
    suffix = PurePath(source).suffix.lower()
    if suffix == ".ini" or (suffix not in _YAML_SUFFIXES and _starts_with_section(text)):
        return Format.ANSIBLE_INI, _parse_ini(text, problems)
    if suffix in _YAML_SUFFIXES:
        data = read_yaml(text, source, problems)
    else:
        data, ini = _yaml_or_ini(text, source, problems)
        if ini is not None:
            return Format.ANSIBLE_INI, ini
    if is_ansible_yaml(data):
        return Format.ANSIBLE_YAML, check_ansible_yaml(data, problems)
    return Format.FLEET, check_inventory(data, problems)


def _yaml_or_ini(
    text: str, source: str, problems: list[InventoryProblem]
) -> tuple[Any, InventorySpec | None]:
    """(YAML data, None), or (None, the INI spec) for text that is no YAML mapping."""
    found: list[InventoryProblem] = []
    try:
        data = read_yaml(text, source, found)
    except InventoryError:
        ini_problems: list[InventoryProblem] = []
        spec = _parse_ini(text, ini_problems)
        if ini_problems:
            raise
        return None, spec
    if data is None or isinstance(data, dict):
        problems.extend(found)
        return data, None
    return None, _parse_ini(text, problems)


def _parse_ini(text: str, problems: list[InventoryProblem]) -> InventorySpec:
    """`fleet.inventory.ansible_ini.parse_ini`, imported when a file is read as INI."""
    from fleet.inventory.ansible_ini import parse_ini as parse

    return parse(text, problems)


def _starts_with_section(text: str) -> bool:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            return line.startswith("[") and line.endswith("]") and " " not in line
    return False
