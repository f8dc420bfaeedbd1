"""What fleet takes from a host's effective ssh configuration, and what it reports.

`from_effective` turns the ``keyword -> values`` answer of ``ssh -G`` (fleet.ssh.ssh_g)
into a `ConfigEntry`: hostname, user, port, the configured identity files, ProxyJump,
ProxyCommand and IdentitiesOnly. The %-tokens OpenSSH leaves to connection time are
expanded here with the tokens ssh_config(5) lists for each keyword (TOKENS):
IdentityFile takes ``%% %C %d %h %i %k %L %l %n %p %r %u``, ProxyCommand ``%% %h %n %p
%r``. ``User`` takes tokens in OpenSSH 9.6 and later (``%u`` is the local user); an older
client prints them unexpanded, and they are expanded here the same way.

Settings fleet does not apply are reported, never skipped in silence: each one logs a
warning once per process (logger ``fleet.ssh.config``), and one that changes where or
how the host is reached (``ProxyUseFdpass yes``) is also the host's error.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import socket
import threading
from dataclasses import dataclass

from fleet.ssh.ssh_g import Effective, SSHConfigProblem

log = logging.getLogger("fleet.ssh.config")

IDENTITY_TOKENS = frozenset("%CdhiLlknpru")
PROXY_TOKENS = frozenset("%hnpr")
USER_TOKENS = frozenset("%CdhiLlknpu")


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """What an ssh config says about one host name (None: it says nothing)."""

    hostname: str | None = None
    port: int | None = None
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    proxy_jump: str | None = None
    proxy_command: str | None = None
    identities_only: bool = False


# keyword -> (values meaning "nothing to report", why fleet does not apply another)
_NOT_APPLIED: dict[str, tuple[frozenset[str], str]] = {
    "stricthostkeychecking": (
        frozenset({"ask", "yes", "true"}),
        "fleet's own host key policy applies (--accept-new-host-keys)",
    ),
    "connecttimeout": (frozenset({"none"}), "fleet's --connect-timeout applies"),
    "canonicalizehostname": (
        frozenset({"false", "no"}),
        "host names are not canonicalized (no DNS lookup while reading the config)",
    ),
    "hostkeyalias": (frozenset(), "host keys are looked up under the address"),
    "certificatefile": (frozenset(), "certificates are not offered"),
    "pkcs11provider": (frozenset({"none"}), "PKCS#11 keys are not offered"),
    "bindaddress": (frozenset(), "the local address is not chosen"),
    "bindinterface": (frozenset(), "the local interface is not chosen"),
    "addressfamily": (frozenset({"any"}), "both address families are used"),
}
# keyword -> (values that are fine, why the host cannot be reached as configured)
_CANNOT_HONOUR: dict[str, tuple[frozenset[str], str]] = {
    "proxyusefdpass": (frozenset({"no", "false"}), "fleet cannot take a passed descriptor"),
}
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def warn_once(config: str, keyword: str, value: str, why: str) -> None:
    """Log "KEYWORD VALUE is not applied" once per process per keyword and value."""
    with _warned_lock:
        if (keyword, value) in _warned:
            return
        _warned.add((keyword, value))
    log.warning("ssh config %s: %s %s is not applied: %s", config, keyword, value, why)


def local_facts() -> dict[str, str]:
    """The local tokens: %d home, %i uid, %L short and %l full host name, %u user."""
    full = socket.gethostname()
    return {
        "d": os.path.expanduser("~"),
        "i": str(os.getuid()),
        "L": full.split(".")[0],
        "l": full,
        "u": getpass.getuser(),
    }


def expand(value: str, values: dict[str, str], allowed: frozenset[str], where: str) -> str:
    """`value` with its %-tokens replaced; an unknown or unfinished token is an error
    (`SSHConfigProblem`), as OpenSSH makes it one."""
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char != "%":
            out.append(char)
            continue
        token = next(chars, "")
        if token == "%":  # noqa: S105 (a %-token, no password)
            out.append("%")
        elif token in allowed and token in values:
            out.append(values[token])
        else:
            shown = f"%{token}" if token else "a lone %"
            raise SSHConfigProblem(f"{where}: {shown} is not a token it accepts")
    return "".join(out)


def from_effective(
    eff: Effective, name: str, config: str, *, user_given: bool = False
) -> ConfigEntry:
    """The `ConfigEntry` in an ``ssh -G`` answer for `name`; raises `SSHConfigProblem`
    for a setting that cannot be honoured or a bad token. `user_given`: the user came
    from the command line (``-l``), taken as it is."""

    def one(keyword: str) -> str | None:
        found = eff.get(keyword)
        return found[0] if found else None

    for keyword, (fine, why) in _CANNOT_HONOUR.items():
        if (value := one(keyword)) is not None and value.lower() not in fine:
            warn_once(config, keyword, value, why)
            raise SSHConfigProblem(f"ssh config {config}: {keyword} {value} for {name}: {why}")
    for keyword, (fine, why) in _NOT_APPLIED.items():
        if (value := one(keyword)) is not None and value.lower() not in fine:
            warn_once(config, keyword, value, why)
    facts = local_facts()
    hostname = one("hostname") or name
    port = one("port") or "22"
    values = {**facts, "h": hostname, "n": name, "p": port, "k": one("hostkeyalias") or name}
    user = one("user") or facts["u"]
    if "%" in user and not user_given:  # an OpenSSH before 9.6 prints User unexpanded
        user = expand(user, values, USER_TOKENS, f"ssh config {config}: User {user}")
    values["r"] = user
    # %C as OpenSSH computes it: SHA-1 of %l%h%p%r (a name, not a security hash)
    connection = facts["l"] + hostname + port + user
    values["C"] = hashlib.sha1(connection.encode(), usedforsecurity=False).hexdigest()
    identities = tuple(
        os.path.expanduser(expand(p, values, IDENTITY_TOKENS, f"ssh config {config}: {p}"))
        for p in eff.get("identityfile", ())
        if p.lower() != "none"
    )
    jump = one("proxyjump")
    command = one("proxycommand")
    if command is not None and command.lower() != "none":
        command = expand(command, values, PROXY_TOKENS, f"ssh config {config}: ProxyCommand")
    else:
        command = None
    return ConfigEntry(
        hostname=hostname,
        port=int(port),
        user=user,
        identity_files=identities,
        proxy_jump=None if not jump or jump.lower() == "none" else jump,
        proxy_command=command,
        identities_only=(one("identitiesonly") or "no").lower() in ("yes", "true"),
    )
