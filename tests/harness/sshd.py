"""A fleet of real OpenSSH hosts on loopback: 127.0.0.2, 127.0.0.3, ... each on its own port.

One `sshd -D` process serves up to 16 host addresses (one `ListenAddress` each) with
one generated ed25519 host key; more hosts means more processes. A host named in
`own_key` gets a process (and so a host key) of its own.

Login: the test user (root in CI) with a generated ed25519 client key listed in a
private `AuthorizedKeysFile`. sshd runs commands through the user's login shell, and
Debian's bash sources ``~/.bashrc`` for ``ssh host cmd``; root's may be slow (pyenv, ...),
so every sshd sets ``HOME`` (``SetEnv``) to an empty directory of the fleet: no rc file
is read. The user's real ``~/.ssh`` is never read or written.

Impostor (a changed host key, TESTING.md row 5): `SSHFleet.start_impostor(host)` stops
whatever serves `host` and starts a new sshd on the *same address and port* with a
freshly generated key, leaving `known_hosts` as it was; `start_host(host)` puts the
genuine one back. This is the realistic case (same address, new key) and needs no
second address.
"""

from __future__ import annotations

import functools
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness import procs

MAX_ADDRESSES_PER_SSHD = 16
#: Test hosts take any number of handshakes at once; `max_startups=None` keeps sshd's
#: stock ``MaxStartups 10:30:100`` (sshd_config(5)), e.g. for a jump host under load.
RAISED_MAX_STARTUPS = "1000:30:1000"


class SSHDStartError(RuntimeError):
    """sshd did not come up on every address; the message carries its log tail."""


@dataclass(frozen=True, slots=True)
class SSHHost:
    name: str
    address: str
    port: int
    host_key_path: Path

    def public_key(self) -> str:
        """``ssh-ed25519 AAAA...`` of this host's key."""
        return public_key_line(self.host_key_path)

    def known_hosts_line(self) -> str:
        return f"[{self.address}]:{self.port} {self.public_key()}"


def host_address(index: int) -> str:
    """Address of the `index`-th test host: 127.0.0.2 upward, skipping 127.0.1.x (stubs)."""
    block, offset = divmod(index, 250)
    third = 0 if block == 0 else block + 1
    return f"127.0.{third}.{offset + 2}"


def host_name(index: int) -> str:
    return f"h{index + 2:02d}"


def generate_key(path: Path, comment: str = "fleet-test") -> Path:
    """A new ed25519 key pair at `path` and `path`.pub (no passphrase)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    keygen = shutil.which("ssh-keygen") or "ssh-keygen"
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


def public_key_line(private_key: Path) -> str:
    kind, blob, *_ = private_key.with_name(private_key.name + ".pub").read_text().split()
    return f"{kind} {blob}"


def _sshd_binary() -> str:
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin")
    if found is None:
        raise SSHDStartError("sshd not found (Debian package openssh-server)")
    return os.path.abspath(found)


def _has_banner(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0) as sock:
            return sock.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


class SSHDProcess:
    """One `sshd -D` serving `hosts` (same key for all of them)."""

    def __init__(
        self,
        directory: Path,
        hosts: Sequence[SSHHost],
        authorized_keys: Path,
        home: Path,
        max_startups: str | None = RAISED_MAX_STARTUPS,
        sftp: str | None = "internal-sftp",
    ) -> None:
        if not 0 < len(hosts) <= MAX_ADDRESSES_PER_SSHD:
            raise ValueError(f"one sshd serves 1 to {MAX_ADDRESSES_PER_SSHD} addresses")
        if len({h.host_key_path for h in hosts}) != 1:
            raise ValueError("hosts of one sshd share one host key")
        self.dir = directory
        self.hosts = tuple(hosts)
        self.config_path = directory / "sshd_config"
        self.log_path = directory / "sshd.log"
        self._authorized_keys = authorized_keys
        self._home = home
        self._max_startups = max_startups
        self._sftp = sftp
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _config(self) -> str:
        listen = "".join(f"ListenAddress {h.address}:{h.port}\n" for h in self.hosts)
        # None: no MaxStartups line, so sshd keeps its stock 10:30:100 (a real bastion's).
        if self._max_startups is not None:
            listen += f"MaxStartups {self._max_startups}\n"
        # None: no sftp subsystem, so sshd refuses the request (CHANNEL_FAILURE).
        if self._sftp is not None:
            listen += f"Subsystem sftp {self._sftp}\n"
        return listen + "\n".join(
            [
                f"HostKey {self.hosts[0].host_key_path}",
                f"PidFile {self.dir / 'sshd.pid'}",
                f"AuthorizedKeysFile {self._authorized_keys}",
                f"SetEnv HOME={self._home}",
                "UsePAM no",
                "UseDNS no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "MaxSessions 100",
                "MaxAuthTries 10",
                "LoginGraceTime 30",
                "AcceptEnv LANG LC_* FLEET_*",
                "AllowTcpForwarding yes",
                "X11Forwarding no",
                "PrintMotd no",
                "PrintLastLog no",
                "LogLevel ERROR",
                "",
            ]
        )

    def launch(self) -> None:
        """Start sshd without waiting (see `wait_ready`)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # Privilege separation directory, required by sshd when run as root.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.config_path.write_text(self._config())
        argv = [_sshd_binary(), "-D", "-f", str(self.config_path), "-E", str(self.log_path)]
        self._proc = procs.spawn(argv, self.dir / "sshd.stdout")

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until every address sends an SSH banner; raise `SSHDStartError` otherwise."""
        assert self._proc is not None
        pending = list(self.hosts)
        deadline = time.monotonic() + timeout
        while pending:
            pending = [h for h in pending if not _has_banner(h.address, h.port)]
            if not pending:
                return
            if self._proc.poll() is not None or time.monotonic() > deadline:
                where = ", ".join(f"{h.address}:{h.port}" for h in pending)
                self.stop()
                raise SSHDStartError(
                    f"sshd ({self.config_path}) not answering on {where}:\n"
                    + procs.log_tail(self.log_path)
                    + "\n"
                    + procs.log_tail(self.dir / "sshd.stdout")
                )
            time.sleep(0.02)

    def stop(self) -> None:
        if self._proc is not None:
            procs.stop(self._proc)
            self._proc = None


class SSHFleet:
    """`count` sshd hosts under `directory`, with their client key and known_hosts.

    `first` offsets host indexes (h02 is index 0) so that several fleets can coexist;
    `own_key` names hosts that get a host key (and an sshd process) of their own;
    `max_startups` is every process's ``MaxStartups`` (None: sshd's stock 10:30:100);
    `sftp` is every process's ``Subsystem sftp`` command (None: no sftp subsystem, the
    request is refused; e.g. ``/bin/false``: an SFTP server that fails at once).
    """

    def __init__(
        self,
        directory: Path | None = None,
        count: int = 6,
        first: int = 0,
        own_key: Iterable[str] = (),
        per_process: int = MAX_ADDRESSES_PER_SSHD,
        max_startups: str | None = RAISED_MAX_STARTUPS,
        sftp: str | None = "internal-sftp",
    ) -> None:
        self.max_startups = max_startups
        self.sftp = sftp
        self.dir = Path(directory or tempfile.mkdtemp(prefix="fleet-sshd-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.home = self.dir / "home"
        self.home.mkdir(exist_ok=True)
        self.client_key = generate_key(self.dir / "client_ed25519", "fleet-test-client")
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text(public_key_line(self.client_key) + "\n")
        self.known_hosts = self.dir / "known_hosts"
        self._serving: dict[str, SSHDProcess] = {}
        self._spawned = 0
        self._lock = threading.Lock()
        own = set(own_key)
        shared = [i for i in range(first, first + count) if host_name(i) not in own]
        groups = [shared[k : k + per_process] for k in range(0, len(shared), per_process)]
        groups += [[i] for i in range(first, first + count) if host_name(i) in own]
        try:
            self.hosts = self._start_groups(groups)
        except BaseException:
            self.stop()
            raise
        self.hosts.sort(key=lambda h: int(h.name[1:]))
        self.write_known_hosts()

    def _new_process(self, hosts: Sequence[SSHHost]) -> SSHDProcess:
        self._spawned += 1
        process = SSHDProcess(
            self.dir / f"sshd{self._spawned:03d}",
            hosts,
            self.authorized_keys,
            self.home,
            self.max_startups,
            self.sftp,
        )
        for host in hosts:
            self._serving[host.name] = process
        return process

    def _start_groups(self, groups: Sequence[Sequence[int]]) -> list[SSHHost]:
        launched = [self._launch_group(group) for group in groups]
        # Each sshd forks per connection, so probing 200 banners one by one takes seconds.
        with ThreadPoolExecutor(max_workers=min(16, len(groups) or 1)) as pool:
            ready = list(pool.map(self._ready, groups, launched))
        return [h for p in ready for h in p.hosts]

    def _ready(self, group: Sequence[int], process: SSHDProcess) -> SSHDProcess:
        for attempt in range(3):
            try:
                process.wait_ready()
                return process
            except SSHDStartError:
                # A port picked free may be taken before sshd binds it: pick again.
                if attempt == 2:
                    raise
                with self._lock:
                    process = self._launch_group(group)
        raise AssertionError("unreachable")

    def _launch_group(self, group: Sequence[int]) -> SSHDProcess:
        key = generate_key(self.dir / f"hostkey{self._spawned + 1:03d}", "fleet-test-host")
        hosts = [
            SSHHost(host_name(i), host_address(i), procs.free_port(host_address(i)), key)
            for i in group
        ]
        process = self._new_process(hosts)
        process.launch()
        return process

    def _start_serving(self, hosts: Sequence[SSHHost]) -> SSHDProcess:
        # Ports are fixed here (a restarted host keeps its address and port).
        for host in hosts:
            procs.wait_for(
                functools.partial(procs.port_is_free, host.address, host.port, reuse=True),
                5.0,
                f"{host.address}:{host.port} to be free",
            )
        process = self._new_process(hosts)
        process.launch()
        process.wait_ready()
        return process

    def host(self, name: str) -> SSHHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def write_known_hosts(self, path: Path | None = None) -> Path:
        """Write a known_hosts listing every genuine host key (default: `.known_hosts`)."""
        path = path or self.known_hosts
        path.write_text("".join(h.known_hosts_line() + "\n" for h in self.hosts))
        return path

    def kill_host(self, host: SSHHost) -> None:
        """Take `host` down: live connections cut, new ones refused. Other hosts of the
        same sshd are restarted at once (their live connections are cut too: give a host
        `own_key` to isolate it)."""
        process = self._serving.pop(host.name, None)
        if process is None:
            return
        process.stop()
        rest = [h for h in process.hosts if h.name != host.name]
        if rest:
            self._start_serving(rest)

    def start_host(self, host: SSHHost) -> None:
        """Serve `host` again with its genuine key (replacing an impostor if one runs)."""
        self.kill_host(host)
        self._start_serving([host])

    def start_impostor(self, host: SSHHost) -> SSHHost:
        """Serve `host`'s address and port with a new host key; known_hosts is unchanged."""
        self.kill_host(host)
        self._spawned += 1
        key = generate_key(self.dir / f"impostor{self._spawned:03d}", "fleet-test-impostor")
        impostor = SSHHost(host.name, host.address, host.port, key)
        self._start_serving([impostor])
        return impostor

    def pids(self) -> list[int]:
        return sorted({p.pid for p in self._serving.values() if p.pid is not None})

    def stop(self) -> None:
        for process in set(self._serving.values()):
            process.stop()
        self._serving.clear()

    def write_inventory(
        self,
        path: Path,
        hosts: Sequence[SSHHost] | None = None,
        group: str = "web",
        extra_vars: Mapping[str, Any] | None = None,
    ) -> Path:
        return write_inventory(
            path,
            self.hosts if hosts is None else hosts,
            identity_file=self.client_key,
            user=self.user,
            group=group,
            extra_vars=extra_vars,
        )

    def __enter__(self) -> SSHFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_inventory(
    path: Path,
    hosts: Sequence[SSHHost],
    *,
    identity_file: Path,
    user: str,
    group: str = "web",
    extra_vars: Mapping[str, Any] | None = None,
) -> Path:
    """An inventory.yaml with one group of `hosts`; `extra_vars` become the group's vars."""
    entry: dict[str, Any] = {
        "hosts": {
            h.name: {
                "address": h.address,
                "port": h.port,
                "user": user,
                "identity_file": str(identity_file),
            }
            for h in hosts
        }
    }
    if extra_vars:
        entry["vars"] = dict(extra_vars)
    path.write_text(yaml.safe_dump({"groups": {group: entry}}, sort_keys=False))
    return path


#: The `make_ssh_fleet` fixture: ``make_ssh_fleet(count, own_key=(...)) -> SSHFleet``.
MakeFleet = Callable[..., SSHFleet]
