"""Jump chains as OpenSSH takes them (issue 11, point 3): a jump host's own ProxyJump
is followed, `ProxyJump none` and inventory `jump: none` mean no jump, a loop is an
error naming the chain. Pure: a temporary ssh config, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.inventory.hosts import Host
from fleet.ssh.errors import ConnectFailure
from fleet.ssh.sshconfig import Target, resolve_target

CONFIG = """
Host web003
    HostName 10.0.3.3
    ProxyJump bastion2
Host bastion2
    HostName 10.0.2.2
    User hop2
    ProxyJump bastion1
Host bastion1
    HostName 10.0.1.1
    Port 2201
Host direct
    HostName 10.0.4.4
    ProxyJump none
Host loop-a
    ProxyJump loop-b
Host loop-b
    ProxyJump loop-a
Host self-loop
    ProxyJump self-loop
"""


def hops(target: Target) -> list[str]:
    chain = []
    hop = target.jump
    while hop is not None:
        chain.append(f"{hop.user}@{hop.address}:{hop.port}")
        hop = hop.jump
    return list(reversed(chain))  # first hop first


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "ssh_config"
    path.write_text(CONFIG)
    return str(path)


def test_a_jump_hosts_own_proxyjump_is_followed(config: str) -> None:
    target = resolve_target(Host("web003", "web003", user="app"), config)
    assert target.address == "10.0.3.3"
    assert [h.split("@")[1] for h in hops(target)] == ["10.0.1.1:2201", "10.0.2.2:22"]
    assert hops(target)[1].startswith("hop2@")


def test_an_inventory_jump_is_followed_through_the_jump_hosts_config(config: str) -> None:
    target = resolve_target(Host("app1", "10.9.9.9", user="app", jump="bastion2"), config)
    assert [h.split("@")[1] for h in hops(target)] == ["10.0.1.1:2201", "10.0.2.2:22"]


def test_an_explicit_chain_keeps_its_order(config: str) -> None:
    target = resolve_target(
        Host("app1", "10.9.9.9", user="app", jump="u@10.7.7.7,bastion1"), config
    )
    assert [h.split("@")[1] for h in hops(target)] == ["10.7.7.7:22", "10.0.1.1:2201"]


def test_proxyjump_none_means_no_jump(config: str) -> None:
    assert resolve_target(Host("direct", "direct", user="app"), config).jump is None


@pytest.mark.parametrize("value", ["none", "NONE", " none "])
def test_inventory_jump_none_wins_over_ssh_config(config: str, value: str) -> None:
    target = resolve_target(Host("web003", "web003", user="app", jump=value), config)
    assert target.jump is None


@pytest.mark.parametrize(
    ("name", "chain"),
    [
        ("loop-a", "jump hosts loop: loop-a -> loop-b -> loop-a"),
        # OpenSSH (ssh -G) refuses this one itself: "jumphost loop via self-loop".
        ("self-loop", "(jump hosts loop: self-loop -> self-loop|jumphost loop via self-loop)"),
    ],
)
def test_a_jump_loop_is_an_error_naming_the_chain(config: str, name: str, chain: str) -> None:
    with pytest.raises((ValueError, ConnectFailure), match=chain):
        resolve_target(Host(name, name, user="app"), config)
