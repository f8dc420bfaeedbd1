"""What Ansible's variables mean to fleet, and how Ansible's INI files type a value.

An Ansible inventory keeps Ansible's variable names: precedence is applied to them as
Ansible applies it, then `host_from_ansible` turns a host's final variables into a
`Host`. The connection variables (`ANSIBLE_FIELDS`) become its fields; the others stay
free variables under their own names (an Ansible ``env: prod`` is not fleet's ``env``).
Where Ansible reads one setting from several names, the later name in the list wins, as
Ansible's config manager loops over them (its ssh connection plugin lists
``ansible_host`` then ``ansible_ssh_host``, ``ansible_port`` then ``ansible_ssh_port``,
...); a null value counts as unset there too.

A variable that changes how Ansible would connect and that fleet cannot honour
(`UNSUPPORTED`: ``ansible_ssh_common_args``, another ``ansible_connection``, ...) is a
problem, never silently dropped.

Sources: ansible-core's ``plugins/connection/ssh.py`` (option vars),
``plugins/inventory/ini.py`` (``_parse_value``), ``module_utils/parsing/convert_bool.py``.
"""

from __future__ import annotations

import ast
import warnings
from typing import Any

from fleet.inventory.hosts import DEFAULT_PORT, Host
from fleet.inventory.values import VAR_CHECKS, json_problem
from fleet.textsafe import show_value

#: Ansible variable -> the `Host` field it sets, in Ansible's order (a later name for
#: the same field wins when both are set).
ANSIBLE_FIELDS = {
    "ansible_host": "address",
    "ansible_ssh_host": "address",
    "ansible_port": "port",
    "ansible_ssh_port": "port",
    "ansible_user": "user",
    "ansible_ssh_user": "user",
    "ansible_private_key_file": "identity_file",
    "ansible_ssh_private_key_file": "identity_file",
    "ansible_connection": "connection",
    "ansible_become": "become",
    "ansible_become_user": "become_user",
}

#: Keys other tools use for a fleet variable. In fleet's own format they are mistakes
#: ("did you mean address?"), not free variables that would silently do nothing.
FOREIGN_KEYS = {**ANSIBLE_FIELDS, "host": "address", "hostname": "address", "ip": "address"}

_SSH_ARGS = "fleet passes no ssh arguments: put ProxyJump and other options in ssh_config"
#: Connection settings fleet cannot honour: why, in one line.
UNSUPPORTED = {
    "ansible_ssh_common_args": _SSH_ARGS,
    "ansible_ssh_extra_args": _SSH_ARGS,
    "ansible_ssh_args": _SSH_ARGS,
    "ansible_ssh_executable": "fleet connects with paramiko, not with an ssh executable",
    "ansible_host_key_checking": "host keys are always checked (unknown ones are "
    "recorded with --accept-new-host-keys)",
    "ansible_ssh_host_key_checking": "host keys are always checked (unknown ones are "
    "recorded with --accept-new-host-keys)",
    "ansible_become_exe": "fleet runs sudo itself (sudo -n)",
    "ansible_become_flags": "fleet runs sudo itself (sudo -n)",
    "ansible_group_priority": "fleet orders groups by depth, then name (Ansible's default)",
}

#: ansible_connection values that mean SSH to fleet (Ansible's ssh and paramiko plugins)
_SSH_CONNECTIONS = frozenset({"ssh", "smart", "paramiko", "paramiko_ssh"})
# Ansible's boolean() accepts these (strings compared lower-cased)
_TRUE = frozenset({"y", "yes", "on", "1", "true", "t"})
_FALSE = frozenset({"n", "no", "off", "0", "false", "f", ""})


def parse_ini_value(text: str) -> Any:
    """A value from an INI inventory, typed as Ansible types it (in host lines and in
    ``[group:vars]`` alike, whatever Ansible's documentation says of the latter):
    `ast.literal_eval` when it reads as a Python literal (``5``, ``True``, ``[1, 2]``,
    ``'05'``, and ``True # note``, a comment being Python syntax), else the text as it
    is. Tuples and sets become lists, bytes text; a complex number or ``...`` stays text,
    as does what Python cannot parse (nested too deeply, a number too long).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return _plain(value, text)


def _plain(value: Any, text: str) -> Any:
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item, text) for item in value]
    if isinstance(value, dict):
        return {_plain(k, text): _plain(v, text) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if value is ... or isinstance(value, complex):
        return "..." if value is ... else str(value)
    return value


def _boolean(value: Any) -> bool | None:
    """Ansible's boolean(), strict: None when `value` is no boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _field_value(field: str, value: Any) -> tuple[Any, str | None]:
    """(the `Host` field's value, why `value` cannot be it or None)."""
    if isinstance(value, str) and "{{" in value:
        return None, f"{show_value(value)} is an Ansible template: fleet does not evaluate them"
    if field == "port":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
    elif field == "become":
        flag = _boolean(value)
        if flag is None:
            return None, f"expected a boolean (true, false, yes, no), got {show_value(value)}"
        return flag, None
    elif field == "connection":
        if value in _SSH_CONNECTIONS:
            return "ssh", None
        if value == "local":
            return "local", None
        return None, (
            f"connection {show_value(value)} is not supported: fleet connects over SSH "
            "(ssh, smart, paramiko) or runs locally (local)"
        )
    return value, VAR_CHECKS[field](value)


def ansible_var_problem(key: str, value: Any) -> str | None:
    """Why `value` for the Ansible variable `key` cannot be used, or None.

    Free variables must be JSON (they travel in task messages); secrets are the
    caller's check (`fleet.inventory.schema.SECRET_KEYS`).
    """
    if key in UNSUPPORTED:
        return f"not supported: {UNSUPPORTED[key]}"
    if key == "ansible_become_method" and value not in (None, "sudo"):
        return f"become method {show_value(value)} is not supported: fleet uses sudo"
    field = ANSIBLE_FIELDS.get(key)
    if field is None or value is None:
        return json_problem(value)
    return _field_value(field, value)[1]


def host_from_ansible(name: str, values: dict[str, Any], groups: tuple[str, ...]) -> Host:
    """The `Host` for `name` from its final Ansible variables (precedence applied), each
    checked by `ansible_var_problem` when it was read."""
    fields: dict[str, Any] = {}
    for key, field in ANSIBLE_FIELDS.items():
        if values.get(key) is not None:
            fields[field] = _field_value(field, values[key])[0]
    free = {k: v for k, v in values.items() if k not in ANSIBLE_FIELDS}
    explicit = frozenset(fields)  # these win over ~/.ssh/config, as fleet's own vars do
    address = fields.pop("address", name)
    port = fields.pop("port", DEFAULT_PORT)
    return Host(
        name=name,
        address=address,
        port=port,
        vars=free,
        groups=groups,
        explicit=explicit,
        **fields,
    )
