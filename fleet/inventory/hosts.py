"""The `Host` value: everything needed to reach one host, and nothing secret.

A `Host` travels inside task messages (as a plain dict), so it carries only
references to secrets (`password_env` names an environment variable on the
worker), never a secret itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

Connection = Literal["ssh", "local"]

#: Host variables that fleet itself understands; every other key is a free user var.
KNOWN_HOST_VARS = frozenset(
    {
        "address",
        "port",
        "user",
        "identity_file",
        "password_env",
        "connection",
        "jump",
        "queue",
        "become",
        "become_user",
        "become_password_env",
        "env",
        "env_from",
    }
)

DEFAULT_PORT = 22
DEFAULT_QUEUE = "fleet"


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True, slots=True)
class Host:
    """One resolved host. `name` is the inventory name; `address` what we connect to."""

    name: str
    address: str
    port: int = DEFAULT_PORT
    user: str | None = None
    connection: Connection = "ssh"
    identity_file: str | None = None
    password_env: str | None = None
    jump: str | None = None
    queue: str | None = None
    become: bool = False
    become_user: str | None = None
    become_password_env: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, hash=False, compare=True)
    # NAME -> a variable of the worker's environment, resolved there (fleet.runenv)
    env_from: Mapping[str, str] = field(default_factory=dict, hash=False, compare=True)
    vars: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)
    groups: tuple[str, ...] = ()
    # The KNOWN_HOST_VARS the inventory set (defaults, group vars or the host's own),
    # which win over ~/.ssh/config even when equal to the default (`port: 22`, an
    # `address` equal to the name). None: not known (a Host built in code or by an
    # older submitter): see `is_explicit`.
    explicit: frozenset[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", _frozen_mapping(self.env))
        object.__setattr__(self, "env_from", _frozen_mapping(self.env_from))
        object.__setattr__(self, "vars", _frozen_mapping(self.vars))

    @property
    def is_local(self) -> bool:
        return self.connection == "local"

    def is_explicit(self, var: str) -> bool:
        """Whether the inventory set host variable `var` (so it wins over ssh config).

        Without `explicit`, a value differing from the default counts as set: an
        address other than the name, a port other than 22, any user, key or jump.
        """
        if self.explicit is not None:
            return var in self.explicit
        if var == "address":
            return self.address != self.name
        if var == "port":
            return self.port != DEFAULT_PORT
        return getattr(self, var, None) is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "connection": self.connection,
            "identity_file": self.identity_file,
            "password_env": self.password_env,
            "jump": self.jump,
            "queue": self.queue,
            "become": self.become,
            "become_user": self.become_user,
            "become_password_env": self.become_password_env,
            "env": dict(self.env),
            "env_from": dict(self.env_from),
            "vars": dict(self.vars),
            "groups": list(self.groups),
            "explicit": None if self.explicit is None else sorted(self.explicit),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Host:
        return cls(
            name=data["name"],
            address=data["address"],
            port=int(data.get("port", DEFAULT_PORT)),
            user=data.get("user"),
            connection=data.get("connection", "ssh"),
            identity_file=data.get("identity_file"),
            password_env=data.get("password_env"),
            jump=data.get("jump"),
            queue=data.get("queue"),
            become=bool(data.get("become", False)),
            become_user=data.get("become_user"),
            become_password_env=data.get("become_password_env"),
            env=data.get("env") or {},
            env_from=data.get("env_from") or {},
            vars=data.get("vars") or {},
            groups=tuple(data.get("groups") or ()),
            explicit=_names(data.get("explicit")),
        )


def _names(value: Any) -> frozenset[str] | None:
    """A message's `explicit` list; anything else (absent, malformed) is not known."""
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    return None
