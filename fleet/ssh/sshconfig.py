"""Where and as whom to connect: the inventory's host, completed by ~/.ssh/config.

Inventory values win; ~/.ssh/config (through `paramiko.SSHConfig`) fills what the
inventory left open: HostName, User, Port, IdentityFile, ProxyJump.
"""

from __future__ import annotations

import getpass
import os
import threading
from dataclasses import dataclass

import paramiko

from fleet.inventory.hosts import DEFAULT_PORT, Host


@dataclass(frozen=True, slots=True)
class Target:
    """A fully resolved SSH endpoint, optionally reached through a jump host."""

    name: str
    address: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    password_env: str | None = None
    jump: Target | None = None

    @property
    def key(self) -> tuple[object, ...]:
        """Pool key: targets with equal keys may share a transport. The credentials
        are part of it: a transport authenticated with one host's key must not
        serve a host whose configured key would fail."""
        return (
            self.address,
            self.port,
            self.user,
            self.identity_files,
            self.password_env,
            self.jump.key if self.jump else None,
        )

    @property
    def label(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    hostname: str | None = None
    port: int | None = None
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    proxy_jump: str | None = None


_cache: dict[str, tuple[tuple[float, int], paramiko.SSHConfig]] = {}
_cache_lock = threading.Lock()


def _load(path: str) -> paramiko.SSHConfig | None:
    path = os.path.expanduser(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_mtime, st.st_size)
    with _cache_lock:
        cached = _cache.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
    config = paramiko.SSHConfig.from_path(path)
    with _cache_lock:
        _cache[path] = (stamp, config)
    return config


def lookup(path: str | None, name: str) -> ConfigEntry:
    """What ssh config says about `name` (empty when there is no config)."""
    config = _load(path) if path else None
    if config is None:
        return ConfigEntry()
    found = config.lookup(name)
    port = found.get("port")
    jump = found.get("proxyjump")
    hostname = found.get("hostname")
    return ConfigEntry(
        hostname=hostname if hostname and hostname != name else None,
        port=int(port) if port else None,
        user=found.get("user"),
        identity_files=tuple(os.path.expanduser(p) for p in found.get("identityfile", [])),
        proxy_jump=None if not jump or jump.lower() == "none" else jump,
    )


def resolve_target(host: Host, ssh_config: str | None) -> Target:
    """The endpoint for `host`. Raises `ValueError` for a malformed jump specification."""
    entry = lookup(ssh_config, host.name)
    # An inventory host with no explicit address has address == name; only then
    # (and for the default port) may ssh config supply the value.
    address = entry.hostname if entry.hostname and host.address == host.name else host.address
    port = entry.port if entry.port and host.port == DEFAULT_PORT else host.port
    user = host.user or entry.user or getpass.getuser()
    identities = ((host.identity_file,) if host.identity_file else ()) + entry.identity_files
    identities = tuple(dict.fromkeys(os.path.expanduser(p) for p in identities))
    # The inventory wins: `jump: none` means no jump host, whatever ssh config says.
    jump_spec = (None if host.jump and host.jump.strip().lower() == "none" else host.jump) or (
        None if host.jump else entry.proxy_jump
    )
    jump = parse_jump(jump_spec, ssh_config, identities, (host.name,)) if jump_spec else None
    return Target(host.name, address, port, user, identities, host.password_env, jump)


def parse_jump(
    spec: str,
    ssh_config: str | None,
    identities: tuple[str, ...],
    chain: tuple[str, ...] = (),
) -> Target:
    """`[user@]host[:port]`, comma-separated for several hops (first hop first).

    As OpenSSH does (ssh(1) -J: the first hop is reached with its own configuration),
    the first hop's own ``ProxyJump`` in ssh config is followed, recursively: web003
    -> bastion2 (ProxyJump bastion1) is reached through bastion1, then bastion2.
    `chain` holds the names already on the way, so a loop is a `ValueError` naming it.
    """
    hop: Target | None = None
    for index, part in enumerate(spec.split(",")):
        user, address, port = _split_hop(part.strip())
        entry = lookup(ssh_config, address)
        if address in chain:
            raise ValueError(f"jump hosts loop: {' -> '.join((*chain, address))}")
        if len(chain) >= MAX_JUMP_DEPTH:
            raise ValueError(f"jump chain longer than {MAX_JUMP_DEPTH}: {' -> '.join(chain)}")
        if index == 0 and entry.proxy_jump:
            hop = parse_jump(entry.proxy_jump, ssh_config, identities, (*chain, address))
        keys = tuple(dict.fromkeys(entry.identity_files + identities))
        hop = Target(
            name=address,
            address=entry.hostname or address,
            port=port or entry.port or DEFAULT_PORT,
            user=user or entry.user or getpass.getuser(),
            identity_files=keys,
            jump=hop,
        )
    if hop is None:
        raise ValueError(f"empty jump host specification {spec!r}")
    return hop


MAX_JUMP_DEPTH = 8


def _split_hop(text: str) -> tuple[str | None, str, int | None]:
    if text.startswith("ssh://"):
        text = text[len("ssh://") :]
    user, _, rest = text.rpartition("@")
    port: int | None = None
    if rest.startswith("["):
        address, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = int(tail[1:])
    elif rest.count(":") == 1:
        address, _, port_text = rest.partition(":")
        port = int(port_text)
    else:
        address = rest
    if not address:
        raise ValueError(f"bad jump host {text!r}")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port in jump host {text!r}")
    return user or None, address, port
