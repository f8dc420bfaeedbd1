"""Where and as whom to connect: the inventory's host, completed by the ssh config.

Inventory values win; the ssh config fills what the inventory left open. The config is
read the way OpenSSH reads it: where the OpenSSH client is installed, by asking it
(``ssh -G``, fleet.ssh.ssh_g; what is taken from the answer: fleet.ssh.config_entry),
with the inventory's explicit address, port and user on its command line, so they win
as they would for ``ssh -o HostName=... -p ... -l ...``. Without the client, paramiko's
parser is the fallback (no ``Include``, no ``Match``, paramiko's token and pattern rules),
and the worker log says so once.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
from dataclasses import dataclass

import paramiko

from fleet.inventory.hosts import DEFAULT_PORT, Host
from fleet.results import Status
from fleet.ssh.config_entry import ConfigEntry, from_effective
from fleet.ssh.errors import ConnectFailure
from fleet.ssh.ssh_g import SSHConfigProblem, effective_config, ssh_binary

log = logging.getLogger("fleet.ssh.config")


@dataclass(frozen=True, slots=True)
class Target:
    """A fully resolved SSH endpoint, optionally reached through a jump host or a
    ProxyCommand (ssh_config(5): the first of the two obtained wins)."""

    name: str
    address: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    password_env: str | None = None
    jump: Target | None = None
    proxy_command: str | None = None
    identities_only: bool = False  # IdentitiesOnly: no agent key is offered

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
            self.proxy_command,
            self.identities_only,
        )

    @property
    def label(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


_cache: dict[str, tuple[tuple[float, int], paramiko.SSHConfig]] = {}
_cache_lock = threading.Lock()
_fallback_said: set[str] = set()


def _load(path: str) -> paramiko.SSHConfig | None:
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


def lookup(
    path: str | None,
    name: str,
    *,
    user: str | None = None,
    port: int | None = None,
    address: str | None = None,
) -> ConfigEntry:
    """What the ssh config at `path` says about `name`, given the values that win over
    it (`user`, `port`, `address`: None when the inventory left them open). Empty when
    there is no config file. Raises `SSHConfigProblem` (its message names the file)."""
    if not path:
        return ConfigEntry()
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        return ConfigEntry()
    if ssh_binary() is not None:
        answer = effective_config(path, name, user=user, port=port, address=address)
        return from_effective(answer, name, path, user_given=user is not None)
    if path not in _fallback_said:
        _fallback_said.add(path)
        log.warning(
            "ssh config %s: the OpenSSH client (ssh) is not installed: read with "
            "paramiko's parser (no Include, no Match, paramiko's own token rules)",
            path,
        )
    config = _load(path)
    if config is None:
        return ConfigEntry()
    try:
        found: paramiko.SSHConfigDict = config.lookup(name)
    except Exception as exc:  # paramiko raises several types for a file it cannot read
        raise SSHConfigProblem(f"ssh config {path}: {type(exc).__name__}: {exc}") from None
    port_text = found.get("port")  # paramiko: str values, identityfile a list
    jump = found.get("proxyjump")
    hostname = found.get("hostname")
    command = found.get("proxycommand")
    return ConfigEntry(
        hostname=hostname if hostname and hostname != name else None,
        port=int(port_text) if port_text else None,
        user=found.get("user"),
        identity_files=tuple(os.path.expanduser(p) for p in found.get("identityfile", [])),
        proxy_jump=None if not jump or jump.lower() == "none" else jump,
        proxy_command=None if not command or command.lower() == "none" else command,
    )


def resolve_target(host: Host, ssh_config: str | None) -> Target:
    """The endpoint for `host`.

    Raises `ValueError` for a malformed jump specification and `ConnectFailure`
    (status error, naming the config file) when the ssh config cannot be read for it.
    """
    address = host.address if host.is_explicit("address") else None
    port = host.port if host.is_explicit("port") else None
    try:
        entry = lookup(ssh_config, host.name, user=host.user, port=port, address=address)
    except SSHConfigProblem as exc:
        raise ConnectFailure(Status.ERROR, str(exc)) from None
    user = host.user or entry.user or getpass.getuser()
    identities = ((host.identity_file,) if host.identity_file else ()) + entry.identity_files
    identities = tuple(dict.fromkeys(os.path.expanduser(p) for p in identities))
    # The inventory wins: `jump: none` means no jump host (and no ProxyCommand: the
    # first of ProxyJump and ProxyCommand obtained wins), whatever ssh config says.
    jump_spec = (None if host.jump and host.jump.strip().lower() == "none" else host.jump) or (
        None if host.jump else entry.proxy_jump
    )
    jump = parse_jump(jump_spec, ssh_config, identities, (host.name,)) if jump_spec else None
    return Target(
        host.name,
        address or entry.hostname or host.address,
        port or entry.port or host.port,
        user,
        identities,
        host.password_env,
        jump,
        proxy_command=None if host.jump or jump else entry.proxy_command,
        identities_only=entry.identities_only,
    )


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
        if address in chain:
            raise ValueError(f"jump hosts loop: {' -> '.join((*chain, address))}")
        if len(chain) >= MAX_JUMP_DEPTH:
            raise ValueError(f"jump chain longer than {MAX_JUMP_DEPTH}: {' -> '.join(chain)}")
        try:  # as ssh -J runs it: ssh -l USER -p PORT HOP
            entry = lookup(ssh_config, address, user=user, port=port)
        except SSHConfigProblem as exc:
            raise ConnectFailure(Status.ERROR, f"jump host {address}: {exc}") from None
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
            # Only the first hop is reached its own way; the next ones through it.
            proxy_command=entry.proxy_command if index == 0 and hop is None else None,
            identities_only=entry.identities_only,
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
