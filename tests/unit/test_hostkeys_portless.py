"""OpenSSH's port-less fallback: no `[addr]:port` entry means the `addr` entries count.

Issue 11, point 4. Source: OpenSSH sshconnect.c check_host_key (the port-less "host"
lookup when the "[host]:port" one finds nothing). No network; keys generated once.
"""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from fleet.results import Status
from fleet.ssh.errors import ConnectFailure
from fleet.ssh.hostkeys import HostKeyPolicy, host_key_name, portless_name

GOOD, OTHER, THIRD = (paramiko.ECDSAKey.generate() for _ in range(3))
NAME = host_key_name("127.0.0.3", 2302)  # [127.0.0.3]:2302


def entry(names: str, key: paramiko.PKey, marker: str = "") -> str:
    return f"{marker}{names} {key.get_name()} {key.get_base64()}\n"


def policy(tmp_path: Path, text: str, accept_new: bool = False) -> HostKeyPolicy:
    known = tmp_path / "known_hosts"
    known.write_text(text)
    return HostKeyPolicy.from_paths(str(known), None, accept_new)


def rejected(p: HostKeyPolicy, key: paramiko.PKey) -> str:
    with pytest.raises(ConnectFailure) as err:
        p.verify(NAME, key)
    assert err.value.status is Status.HOSTKEY_REJECTED
    return err.value.message


def test_portless_name() -> None:
    assert portless_name("[127.0.0.3]:2302") == "127.0.0.3"
    assert portless_name("[::1]:2222") == "::1"
    assert portless_name("127.0.0.3") is None and portless_name("web01") is None


def test_a_portless_entry_with_the_hosts_key_is_accepted(tmp_path: Path) -> None:
    policy(tmp_path, entry("127.0.0.3", GOOD)).verify(NAME, GOOD)


def test_a_hashed_portless_entry_is_accepted(tmp_path: Path) -> None:
    hashed = paramiko.HostKeys.hash_host("127.0.0.3")
    policy(tmp_path, entry(hashed, GOOD)).verify(NAME, GOOD)


def test_a_portless_entry_in_a_pattern_line_is_accepted(tmp_path: Path) -> None:
    policy(tmp_path, entry("web03,127.0.0.3", GOOD)).verify(NAME, GOOD)
    policy(tmp_path, entry("127.0.0.*", GOOD)).verify(NAME, GOOD)


def test_a_portless_entry_with_another_key_is_unknown_not_changed(tmp_path: Path) -> None:
    message = rejected(policy(tmp_path, entry("127.0.0.3", OTHER)), GOOD)
    assert message.startswith("unknown host key for [127.0.0.3]:2302")
    assert "CHANGED" not in message


def test_accept_new_records_the_port_entry_when_the_portless_key_differs(
    tmp_path: Path,
) -> None:
    p = policy(tmp_path, entry("127.0.0.3", OTHER), accept_new=True)
    p.verify(NAME, GOOD)
    assert entry(NAME, GOOD) in (tmp_path / "known_hosts").read_text()
    p.verify(NAME, GOOD)  # from now on the port's own entry decides


def test_a_port_entry_wins_over_the_portless_one(tmp_path: Path) -> None:
    # `[addr]:port` exists with another key: that is a changed key, whatever addr says.
    text = entry(NAME, OTHER) + entry("127.0.0.3", GOOD)
    assert "has CHANGED" in rejected(policy(tmp_path, text), GOOD)


def test_a_revoked_portless_key_is_refused_on_any_port(tmp_path: Path) -> None:
    text = entry("127.0.0.3", GOOD, "@revoked ") + entry(NAME, GOOD)
    assert "REVOKED" in rejected(policy(tmp_path, text), GOOD)


def test_the_known_portless_key_type_is_offered_first(tmp_path: Path) -> None:
    rsa = paramiko.RSAKey.generate(1024)
    p = policy(tmp_path, entry("127.0.0.3", rsa))
    offered = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
    assert p.preferred_algorithms(NAME, offered)[0] == "rsa-sha2-512"


def test_port_22_has_no_fallback_to_do(tmp_path: Path) -> None:
    p = policy(tmp_path, entry("127.0.0.3", OTHER))
    with pytest.raises(ConnectFailure, match="has CHANGED"):
        p.verify(host_key_name("127.0.0.3", 22), GOOD)
