"""ssh-agent authentication and ~/.ssh/config (ProxyJump) against real OpenSSH servers.

Everything goes through `fleet.execute.execute`, so through the process's default
connection pool: it is closed before and after each test, or a transport
authenticated by one test would serve the next one.

A hop through a bastion is proven from the kernel's socket table, not from timing:
the target's `$SSH_CONNECTION` names the client end of the TCP connection it sees,
and that socket must belong to the bastion's per-connection sshd (the process that
also holds our session socket to the bastion's address), not to this process.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.command import ExecOptions
from fleet.execute import execute
from fleet.inventory.hosts import Host
from fleet.results import Status
from fleet.ssh import close_default_pool
from tests.harness import procs
from tests.harness.sshd import MakeFleet, SSHFleet, SSHHost, generate_key

# A failed login must end well inside this (auth timeout 15 s): a hang guard.
QUICK = 6.0

# No warning filter here: the Connector closes its agent connection when the login
# ends and never lets paramiko open one to a missing or dead socket, so a leaked
# agent socket is a ResourceWarning, which pytest turns into an error.


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # No default keys (~/.ssh/id_*) and no user known_hosts: only what a test offers.
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    close_default_pool()
    yield
    close_default_pool()


def options(known_hosts: Path, **kw: Any) -> ExecOptions:
    values: dict[str, Any] = {
        # Generous: a loaded 2-core CI machine must not turn a login into a timeout.
        "connect_timeout": 5.0,
        "auth_timeout": 15.0,
        "command_timeout": 15.0,
        "known_hosts": str(known_hosts),
        "user_known_hosts": None,
        "ssh_config": None,
    }
    values.update(kw)
    return ExecOptions(**values)


# --- ssh-agent ---------------------------------------------------------------------


@dataclass
class Agent:
    sock: Path
    pid: int

    def client_count(self) -> int:
        """Connections the agent holds open (its sockets, less the listening one)."""
        return len(_socket_inodes(self.pid)) - 1

    def wait_idle(self, within: float = 10.0) -> bool:
        """Whether the agent ends up with no client connection (polled)."""
        deadline = time.monotonic() + within
        while self.client_count() > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def add(self, key: Path) -> None:
        env = {**os.environ, "SSH_AUTH_SOCK": str(self.sock)}
        subprocess.run(["ssh-add", str(key)], env=env, check=True, capture_output=True, timeout=10)

    def listed(self) -> str:
        env = {**os.environ, "SSH_AUTH_SOCK": str(self.sock)}
        done = subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, text=True)
        return done.stdout


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    """A real ssh-agent with no keys, SSH_AUTH_SOCK pointing at it (paramiko.Agent
    reads os.environ when fleet asks it for keys)."""
    binary = shutil.which("ssh-agent")
    if binary is None or shutil.which("ssh-add") is None:
        pytest.skip("ssh-agent/ssh-add not installed (Debian package openssh-client)")
    # A unix socket path is limited to ~108 bytes: pytest's tmp_path may be longer.
    directory = Path(tempfile.mkdtemp(prefix="fleet-agent-"))
    sock = directory / "agent.sock"
    proc = procs.spawn([binary, "-D", "-a", str(sock)], directory / "agent.log")
    try:
        procs.wait_for(sock.exists, 5.0, "ssh-agent's socket")
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield Agent(sock, proc.pid)
    finally:
        close_default_pool()
        procs.stop(proc)
        shutil.rmtree(directory, ignore_errors=True)


def agent_host(fleet: SSHFleet, h: SSHHost, **kw: Any) -> Host:
    """The inventory host with no identity_file: only the agent has a key."""
    return Host(name=h.name, address=h.address, port=h.port, user=fleet.user, **kw)


def test_agent_key_authenticates(ssh_fleet: SSHFleet, agent: Agent) -> None:
    agent.add(ssh_fleet.client_key)
    assert "fleet-test-client" in agent.listed()
    r = execute(
        agent_host(ssh_fleet, ssh_fleet.hosts[0]), "echo agent", options(ssh_fleet.known_hosts)
    )
    assert r.status is Status.OK, r.error
    assert r.stdout == "agent\n"


def test_agent_with_no_keys_is_auth_failed_quickly(ssh_fleet: SSHFleet, agent: Agent) -> None:
    assert "no identities" in agent.listed()
    t0 = time.monotonic()
    r = execute(
        agent_host(ssh_fleet, ssh_fleet.hosts[1]), "echo agent", options(ssh_fleet.known_hosts)
    )
    assert time.monotonic() - t0 < QUICK
    assert r.status is Status.AUTH_FAILED, r.error
    assert r.error is not None and "no key or password available" in r.error


def test_agent_with_an_unauthorized_key_is_auth_failed(
    ssh_fleet: SSHFleet, agent: Agent, tmp_path: Path
) -> None:
    agent.add(generate_key(tmp_path / "stranger", "fleet-test-stranger"))
    t0 = time.monotonic()
    r = execute(agent_host(ssh_fleet, ssh_fleet.hosts[1]), "true", options(ssh_fleet.known_hosts))
    assert time.monotonic() - t0 < QUICK
    assert r.status is Status.AUTH_FAILED, r.error
    assert r.error is not None and "an agent key" in r.error


def test_without_the_agent_the_same_host_is_auth_failed(ssh_fleet: SSHFleet) -> None:
    # The counter-proof of test_agent_key_authenticates: no agent, no key, no login.
    assert "SSH_AUTH_SOCK" not in os.environ
    r = execute(agent_host(ssh_fleet, ssh_fleet.hosts[0]), "true", options(ssh_fleet.known_hosts))
    assert r.status is Status.AUTH_FAILED, r.error


@pytest.mark.parametrize("kind", ["missing", "stale socket", "regular file"])
def test_dangling_agent_socket_is_auth_failed_not_an_error(
    ssh_fleet: SSHFleet, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # A unix socket path is limited to ~108 bytes: pytest's tmp_path may be longer.
    directory = Path(tempfile.mkdtemp(prefix="fleet-agent-"))
    path = directory / "agent.sock"
    if kind == "stale socket":  # an agent killed without removing its socket file
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.close()
        assert path.exists()
    elif kind == "regular file":
        path.write_text("")
    monkeypatch.setenv("SSH_AUTH_SOCK", str(path))
    try:
        # A socket paramiko left behind would be freed (and warn: an error) at once.
        t0 = time.monotonic()
        host = agent_host(ssh_fleet, ssh_fleet.hosts[2])
        r = execute(host, "true", options(ssh_fleet.known_hosts))
        assert time.monotonic() - t0 < QUICK
        assert r.status is Status.AUTH_FAILED, r.error
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("login", ["accepted", "refused"])
def test_agent_connection_is_closed_after_login(
    ssh_fleet: SSHFleet, agent: Agent, tmp_path: Path, login: str
) -> None:
    if login == "accepted":
        agent.add(ssh_fleet.client_key)
    else:
        agent.add(generate_key(tmp_path / "stranger", "fleet-test-stranger"))
    host = agent_host(ssh_fleet, ssh_fleet.hosts[3])
    assert agent.wait_idle()  # ssh-add's connection may linger a moment
    # The cyclic GC would close a leaked socket at a random moment: keep it out,
    # so only an explicit close can pass.
    gc.disable()
    try:
        r = execute(host, "true", options(ssh_fleet.known_hosts))
        assert r.status is (Status.OK if login == "accepted" else Status.AUTH_FAILED), r.error
        # Closed when the login ended, with the SSH transport still pooled (the
        # agent drops its end a moment after ours).
        assert agent.wait_idle(), "fleet left its agent connection open"
    finally:
        close_default_pool()
        gc.enable()


def test_agent_is_tried_after_an_unauthorized_identity_file(
    ssh_fleet: SSHFleet, agent: Agent, tmp_path: Path
) -> None:
    agent.add(ssh_fleet.client_key)
    stranger = generate_key(tmp_path / "stranger", "fleet-test-stranger")
    host = agent_host(ssh_fleet, ssh_fleet.hosts[2], identity_file=str(stranger))
    r = execute(host, "echo agent", options(ssh_fleet.known_hosts))
    assert r.status is Status.OK, r.error


# --- ssh config --------------------------------------------------------------------


def config_block(alias: str, h: SSHHost, user: str, key: Path | None, jump: str | None) -> str:
    lines = [f"Host {alias}", f"    HostName {h.address}", f"    Port {h.port}", f"    User {user}"]
    if key is not None:
        lines.append(f"    IdentityFile {key}")
    if jump is not None:
        lines.append(f"    ProxyJump {jump}")
    return "\n".join(lines) + "\n\n"


def write_jump_config(
    path: Path, fleet: SSHFleet, bastion: SSHHost, target: SSHHost, key: Path | None
) -> Path:
    path.write_text(
        config_block("bastion", bastion, fleet.user, key, None)
        + config_block("alias", target, fleet.user, key, "bastion")
    )
    return path


def alias_host() -> Host:
    # What an inventory line `alias:` with no address gives: address == name.
    return Host(name="alias", address="alias")


def _tcp_table() -> list[tuple[tuple[str, int], tuple[str, int], int]]:
    """(local, remote, inode) of every IPv4 TCP socket."""

    def endpoint(text: str) -> tuple[str, int]:
        ip_hex, port_hex = text.split(":")
        ip = ".".join(str(b) for b in reversed(bytes.fromhex(ip_hex)))
        return ip, int(port_hex, 16)

    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        rows.append((endpoint(parts[1]), endpoint(parts[2]), int(parts[9])))
    return rows


def _socket_inodes(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return found
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[8:-1]))
    return found


def _owners(inode: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if inode in _socket_inodes(pid)]


def connection_owner_serves(
    ssh_connection: str, target: SSHHost, bastion: SSHHost
) -> tuple[list[int], bool]:
    """Who holds the client end of the TCP connection the target saw, and whether
    that process also holds a socket on the bastion's sshd address (it is the
    bastion's per-connection sshd)."""
    client_ip, client_port, server_ip, server_port = ssh_connection.split()
    assert (server_ip, int(server_port)) == (target.address, target.port)
    table = _tcp_table()
    inodes = [
        inode
        for local, remote, inode in table
        if local == (client_ip, int(client_port)) and remote == (target.address, target.port)
    ]
    assert len(inodes) == 1, f"client socket {client_ip}:{client_port} not found"
    owners = _owners(inodes[0])
    on_bastion = {inode for local, _, inode in table if local == (bastion.address, bastion.port)}
    return owners, any(_socket_inodes(pid) & on_bastion for pid in owners)


def test_proxyjump_from_ssh_config(ssh_fleet: SSHFleet, tmp_path: Path) -> None:
    bastion, target = ssh_fleet.hosts[0], ssh_fleet.hosts[4]
    config = write_jump_config(
        tmp_path / "ssh_config", ssh_fleet, bastion, target, ssh_fleet.client_key
    )
    opts = options(ssh_fleet.known_hosts, ssh_config=str(config))
    r = execute(alias_host(), "echo $SSH_CONNECTION", opts)
    assert r.status is Status.OK, r.error
    if os.geteuid() != 0:
        pytest.skip("reading sshd's /proc/PID/fd needs root: the hop is not checked")
    # The pooled transports are still open: the tunnel's socket exists right now.
    owners, via_bastion = connection_owner_serves(r.stdout, target, bastion)
    assert os.getpid() not in owners, "fleet connected to the target directly"
    assert via_bastion, f"the target's client socket is held by {owners}, not the bastion's sshd"


def test_proxyjump_with_agent_and_no_identity_file(
    ssh_fleet: SSHFleet, agent: Agent, tmp_path: Path
) -> None:
    # Both hops log in with the agent's key: nothing in the config or inventory names one.
    agent.add(ssh_fleet.client_key)
    bastion, target = ssh_fleet.hosts[1], ssh_fleet.hosts[5]
    config = write_jump_config(tmp_path / "ssh_config", ssh_fleet, bastion, target, None)
    r = execute(
        alias_host(), "echo $SSH_CONNECTION", options(ssh_fleet.known_hosts, ssh_config=str(config))
    )
    assert r.status is Status.OK, r.error
    if os.geteuid() == 0:
        owners, via_bastion = connection_owner_serves(r.stdout, target, bastion)
        assert via_bastion, owners


def test_alias_unreachable_when_its_bastion_dies(make_ssh_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_ssh_fleet(2, own_key=("h08",))
    bastion, target = fleet.host("h08"), fleet.host("h09")
    config = write_jump_config(tmp_path / "ssh_config", fleet, bastion, target, fleet.client_key)
    opts = options(fleet.known_hosts, ssh_config=str(config))
    assert execute(alias_host(), "echo hop", opts).status is Status.OK

    fleet.kill_host(bastion)
    t0 = time.monotonic()
    r = execute(alias_host(), "echo hop", opts)
    assert time.monotonic() - t0 < QUICK
    assert r.status is Status.UNREACHABLE, (r.status, r.error)
    assert r.error is not None and "jump host" in r.error

    direct = Host(
        name=target.name,
        address=target.address,
        port=target.port,
        user=fleet.user,
        identity_file=str(fleet.client_key),
    )
    r = execute(direct, "echo direct", options(fleet.known_hosts))
    assert r.status is Status.OK, r.error


# --- inventory values win over ssh config ------------------------------------------


def test_inventory_address_port_user_key_win_over_ssh_config(
    ssh_fleet: SSHFleet, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[3]
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host {h.name}\n"
        "    HostName 127.0.0.250\n"
        "    Port 1\n"
        "    User nobody-here\n"
        f"    IdentityFile {tmp_path / 'missing_key'}\n"
    )
    host = Host(
        name=h.name,
        address=h.address,
        port=h.port,
        user=ssh_fleet.user,
        identity_file=str(ssh_fleet.client_key),
    )
    r = execute(
        host,
        'echo "$(id -un) $SSH_CONNECTION"',
        options(ssh_fleet.known_hosts, ssh_config=str(config)),
    )
    assert r.status is Status.OK, r.error
    user, *_, server_ip, server_port = r.stdout.split()
    assert (user, server_ip, int(server_port)) == (ssh_fleet.user, h.address, h.port)


def test_ssh_config_fills_what_the_inventory_left_open(ssh_fleet: SSHFleet, tmp_path: Path) -> None:
    # The counterpart: same config shape, inventory silent -> config values are used
    # (here they point nowhere, so the host is unreachable on port 1).
    h = ssh_fleet.hosts[3]
    config = tmp_path / "ssh_config"
    config.write_text(f"Host {h.name}\n    HostName {h.address}\n    Port 1\n")
    host = Host(
        name=h.name, address=h.name, user=ssh_fleet.user, identity_file=str(ssh_fleet.client_key)
    )
    r = execute(host, "true", options(ssh_fleet.known_hosts, ssh_config=str(config)))
    assert r.status is Status.UNREACHABLE, r.error
    assert r.error is not None and f"{h.address}:1" in r.error


def test_inventory_jump_wins_over_ssh_config_proxyjump(
    ssh_fleet: SSHFleet, refused_port: Any, tmp_path: Path
) -> None:
    bastion, target = ssh_fleet.hosts[2], ssh_fleet.hosts[4]
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host {target.name}\n"
        f"    ProxyJump {ssh_fleet.user}@{refused_port.address}:{refused_port.port}\n"
    )
    host = Host(
        name=target.name,
        address=target.address,
        port=target.port,
        user=ssh_fleet.user,
        identity_file=str(ssh_fleet.client_key),
        jump=f"{ssh_fleet.user}@{bastion.address}:{bastion.port}",
    )
    r = execute(
        host, "echo $SSH_CONNECTION", options(ssh_fleet.known_hosts, ssh_config=str(config))
    )
    assert r.status is Status.OK, r.error
    if os.geteuid() == 0:
        owners, via_bastion = connection_owner_serves(r.stdout, target, bastion)
        assert via_bastion, owners
