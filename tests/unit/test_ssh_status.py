"""Status mapping of fleet.ssh with injected fakes: every failure kind -> status and words.

No network and no monkeypatching: a `Connector` gets a scripted socket factory and
transport factory; the fake transport hands out scripted channels.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
import pytest

from fleet.command import CappedBuffer, ExecOptions
from fleet.inventory.hosts import Host
from fleet.results import HostResult, Status
from fleet.ssh import ConnectionPool, Connector, run_command
from fleet.ssh.command import _MarkedStdout, kill_remote
from fleet.ssh.hostkeys import fingerprint

_KEYS: dict[str, paramiko.PKey] = {}


def key(name: str) -> paramiko.PKey:
    if name not in _KEYS:
        _KEYS[name] = paramiko.RSAKey.generate(1024)
    return _KEYS[name]


class FakeSocket:
    closed = False

    def close(self) -> None:
        self.closed = True


class FakeChannel:
    """Plays back stdout/stderr chunks, then an exit status (or never ends)."""

    def __init__(
        self, stdout: list[bytes], stderr: list[bytes], status: int | None, *, hang: bool = False
    ) -> None:
        self.out = list(stdout)
        self.err = list(stderr)
        self.status = status
        self.hang = hang
        self.eof_received = False
        self.closed = False
        self.command = ""
        self.stdin_closed = False

    def set_combine_stderr(self, _: bool) -> None:
        pass

    def exec_command(self, command: str) -> None:
        self.command = command
        self.out.insert(0, b"FLEET-PID 4242\n")

    def sendall(self, _: bytes) -> None:
        pass

    def shutdown_write(self) -> None:
        self.stdin_closed = True

    def fileno(self) -> int:
        raise NotImplementedError  # the drain loop falls back to short sleeps

    def recv_ready(self) -> bool:
        return bool(self.out)

    def recv_stderr_ready(self) -> bool:
        return bool(self.err)

    def recv(self, _: int) -> bytes:
        return self.out.pop(0)

    def recv_stderr(self, _: int) -> bytes:
        return self.err.pop(0)

    def exit_status_ready(self) -> bool:
        done = not self.hang and not self.out and not self.err
        if done:
            self.eof_received = True
        return done and self.status is not None

    def recv_exit_status(self) -> int:
        return -1 if self.status is None else self.status

    def close(self) -> None:
        self.closed = True


class FakeTransport:
    """Scripted phases: `phase_error` raises in start_client; `complete=False` never
    finishes the handshake; `remote_key` is the host key shown; `accept` the auth."""

    instances: list[FakeTransport] = []

    def __init__(
        self,
        sock: Any,
        *,
        banner: str = "SSH-2.0-Fake",
        complete: bool = True,
        phase_error: BaseException | None = None,
        remote_key: str = "genuine",
        accept: Callable[[str, Any], bool] = lambda user, cred: True,
        channels: list[FakeChannel] | None = None,
        open_error: BaseException | None = None,
    ) -> None:
        self.sock = sock
        self.banner = banner
        self.complete = complete
        self.phase_error = phase_error
        self.remote_key = remote_key
        self.accept = accept
        self.channels = channels if channels is not None else []
        self.open_error = open_error
        self.active = False
        self.authenticated = False
        self.remote_version = ""
        self.security = type("Sec", (), {"key_types": ("ssh-ed25519", "rsa-sha2-512")})()
        self.auth_attempts: list[Any] = []
        FakeTransport.instances.append(self)

    def get_security_options(self) -> Any:
        return self.security

    def start_client(self, event: threading.Event) -> None:
        if self.phase_error is not None:
            self.error = self.phase_error
            self.active = False
            event.set()
            return
        self.active = True
        if self.complete:
            self.remote_version = self.banner
            event.set()

    def get_exception(self) -> BaseException | None:
        return getattr(self, "error", None)

    def is_active(self) -> bool:
        return self.active

    def get_remote_server_key(self) -> paramiko.PKey:
        return key(self.remote_key)

    def auth_publickey(self, user: str, pkey: Any) -> list[str]:
        self.auth_attempts.append(("key", pkey))
        if not self.accept(user, pkey):
            raise paramiko.AuthenticationException("denied")
        self.authenticated = True
        return []

    def auth_password(self, user: str, password: str, fallback: bool = True) -> list[str]:
        self.auth_attempts.append(("password", "<hidden>"))
        if not self.accept(user, password):
            raise paramiko.AuthenticationException("denied")
        self.authenticated = True
        return []

    def is_authenticated(self) -> bool:
        return self.authenticated

    def open_session(self, timeout: float | None = None) -> FakeChannel:
        if self.open_error is not None:
            raise self.open_error
        if not self.channels:
            return FakeChannel([], [], 0)
        return self.channels.pop(0)

    def close(self) -> None:
        self.active = False


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    known = tmp_path / "known_hosts"
    known.write_text(f"[10.0.0.1]:2222 {key('genuine').get_name()} {key('genuine').get_base64()}\n")
    ident = tmp_path / "id_rsa"
    key("client").write_private_key_file(str(ident))
    host = Host(
        name="web01", address="10.0.0.1", port=2222, user="deploy", identity_file=str(ident)
    )
    options = ExecOptions(
        connect_timeout=0.3,
        auth_timeout=0.5,
        command_timeout=0.5,
        known_hosts=str(known),
        user_known_hosts=None,
        ssh_config=None,
    )
    return {"host": host, "options": options, "known": known, "ident": ident}


def make_pool(
    *,
    sock_error: BaseException | None = None,
    environ: dict[str, str] | None = None,
    **transport_kw: Any,
) -> ConnectionPool:
    def socket_factory(address: str, port: int, timeout: float) -> FakeSocket:
        if sock_error is not None:
            raise sock_error
        return FakeSocket()

    connector = Connector(
        socket_factory=socket_factory,
        transport_factory=lambda sock: FakeTransport(sock, **transport_kw),
        agent=lambda: (),
        environ=environ or {},
    )
    return ConnectionPool(connector)


def run(env: dict[str, Any], pool: ConnectionPool, command: str = "true", **kw: Any) -> HostResult:
    host = env["host"]
    if kw:
        host = Host.from_dict({**host.to_dict(), **kw})
    result = run_command(host, command, env["options"], pool)
    json.dumps(result.to_dict())  # every result is JSON-safe
    pool.close()
    return result


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
        (TimeoutError("timed out"), "timed out after 0.3 s"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "no route to 10.0.0.1:2222"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "no route to"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve host name"),
    ],
)
def test_tcp_failures_are_unreachable(env: dict[str, Any], exc: BaseException, words: str) -> None:
    r = run(env, make_pool(sock_error=exc))
    assert r.status is Status.UNREACHABLE
    assert words in (r.error or "")
    assert r.exit_code is None and r.started_at and r.duration_s is not None


def test_no_banner_in_time_is_unreachable(env: dict[str, Any]) -> None:
    r = run(env, make_pool(complete=False, banner=""))
    assert r.status is Status.UNREACHABLE
    assert "no SSH banner within 0.3 s" in (r.error or "")
    assert r.duration_s is not None and r.duration_s < 1.0


def test_banner_then_stall_is_unreachable(env: dict[str, Any]) -> None:
    pool = make_pool(complete=False)
    FakeTransport.instances.clear()
    pool.connector._transport_factory = lambda sock: _stalled(sock)  # type: ignore[attr-defined]
    r = run(env, pool)
    assert r.status is Status.UNREACHABLE and "key exchange did not finish" in (r.error or "")


def _stalled(sock: Any) -> FakeTransport:
    t = FakeTransport(sock, complete=False)
    t.remote_version = "SSH-2.0-Stalled"
    return t


@pytest.mark.parametrize(
    ("exc", "status", "words"),
    [
        (
            # At once, well before the banner timeout: the peer closed, it did not stall
            # (issue 11 point 5; the stall is tests/integration/test_banner.py's).
            paramiko.SSHException("Error reading SSH protocol banner"),
            Status.UNREACHABLE,
            "closed the connection before sending an SSH banner",
        ),
        (
            paramiko.SSHException("Error reading SSH protocol banner[Errno 104] reset"),
            Status.UNREACHABLE,
            "closed the connection before sending an SSH banner",
        ),
        (EOFError(), Status.UNREACHABLE, "closed the connection during SSH negotiation"),
        (
            paramiko.SSHException("Incompatible ssh peer (no acceptable kex algorithm)"),
            Status.ERROR,
            "Incompatible",
        ),
    ],
)
def test_handshake_failures(
    env: dict[str, Any], exc: BaseException, status: Status, words: str
) -> None:
    r = run(env, make_pool(phase_error=exc))
    assert r.status is status and words in (r.error or "")


def test_unknown_host_key_rejected_with_fingerprint(env: dict[str, Any]) -> None:
    before = env["known"].read_bytes()
    host = Host.from_dict({**env["host"].to_dict(), "port": 2200})
    pool = make_pool()
    r = run_command(host, "true", env["options"], pool)
    assert r.status is Status.HOSTKEY_REJECTED
    assert fingerprint(key("genuine")) in (r.error or "") and "unknown host key" in (r.error or "")
    assert env["known"].read_bytes() == before


def test_changed_host_key_rejected_even_with_accept_new(env: dict[str, Any]) -> None:
    options = ExecOptions.from_dict({**env["options"].to_dict(), "accept_new_host_keys": True})
    r = run_command(env["host"], "true", options, make_pool(remote_key="impostor"))
    assert r.status is Status.HOSTKEY_REJECTED
    assert fingerprint(key("genuine")) in (r.error or "")
    assert fingerprint(key("impostor")) in (r.error or "")


def test_accept_new_records_the_key(env: dict[str, Any]) -> None:
    options = ExecOptions.from_dict({**env["options"].to_dict(), "accept_new_host_keys": True})
    host = Host.from_dict({**env["host"].to_dict(), "port": 2200})
    assert run_command(host, "true", options, make_pool()).ok
    assert run_command(host, "true", options, make_pool()).ok
    lines = env["known"].read_text().splitlines()
    assert sum(line.startswith("[10.0.0.1]:2200 ") for line in lines) == 1


def test_auth_rejected_is_auth_failed_and_hides_password(env: dict[str, Any]) -> None:
    pool = make_pool(accept=lambda user, cred: False, environ={"PW": "s3cret-value"})
    r = run(env, pool, password_env="PW")
    assert r.status is Status.AUTH_FAILED
    assert "key " + str(env["ident"]) in (r.error or "") and "password" in (r.error or "")
    assert "s3cret" not in json.dumps(r.to_dict())


def test_password_by_reference_is_used(env: dict[str, Any]) -> None:
    pool = make_pool(
        accept=lambda user, cred: cred == "s3cret-value", environ={"PW": "s3cret-value"}
    )
    assert run(env, pool, password_env="PW").ok


def test_unset_password_env_is_said(env: dict[str, Any]) -> None:
    r = run(env, make_pool(accept=lambda user, cred: False), password_env="NOPE")
    assert r.status is Status.AUTH_FAILED and "NOPE is not set on the worker" in (r.error or "")


def test_configured_key_is_offered_first(env: dict[str, Any]) -> None:
    FakeTransport.instances.clear()
    assert run(env, make_pool()).ok
    (transport,) = FakeTransport.instances
    assert transport.auth_attempts[0][0] == "key"
    assert transport.auth_attempts[0][1].asbytes() == key("client").asbytes()


def test_exit_codes_and_marker_stripped(env: dict[str, Any]) -> None:
    chan = FakeChannel([b"hello\n"], [b"warn\n"], 0)
    r = run(env, make_pool(channels=[chan]))
    assert r.status is Status.OK and r.stdout == "hello\n" and r.stderr == "warn\n"
    assert r.stdout_bytes == 6 and chan.stdin_closed
    r = run(env, make_pool(channels=[FakeChannel([], [b"boom\n"], 3)]))
    assert r.status is Status.FAILED and r.exit_code == 3 and r.error == "exit code 3"


def test_no_exit_status_is_failed_without_code(env: dict[str, Any]) -> None:
    chan = FakeChannel([b"x"], [], None)
    chan.closed = True
    r = run(env, make_pool(channels=[chan]))
    assert r.status is Status.FAILED and r.exit_code is None and "signal" in (r.error or "")


def test_command_timeout_keeps_output_and_reports_kill(env: dict[str, Any]) -> None:
    hung = FakeChannel([b"partial\n"], [], None, hang=True)
    killer = FakeChannel([b"gone\n"], [], 0)
    r = run(env, make_pool(channels=[hung, killer]))
    assert r.status is Status.TIMEOUT and r.stdout == "partial\n"
    assert r.remote_kill_confirmed is True and "process group 4242 killed" in (r.error or "")
    assert "kill -TERM -4242" in killer.command


def test_unconfirmed_kill_is_said(env: dict[str, Any]) -> None:
    hung = FakeChannel([], [], None, hang=True)
    r = run(env, make_pool(channels=[hung], open_error=None))
    assert r.status is Status.TIMEOUT
    # The fake's default channel prints nothing: the kill cannot be confirmed.
    assert r.remote_kill_confirmed is False and "could not confirm" in (r.error or "")


def test_output_capped_and_counted(env: dict[str, Any]) -> None:
    options = ExecOptions.from_dict({**env["options"].to_dict(), "output_cap": 10})
    chan = FakeChannel([b"a" * 8, b"b" * 8], [b"\xff" * 4], 0)
    r = run_command(env["host"], "x", options, make_pool(channels=[chan]))
    assert r.stdout == "a" * 8 + "bb" and r.stdout_truncated and r.stdout_bytes == 16
    assert r.stderr == "\ufffd" * 4 and not r.stderr_truncated


def test_dead_pooled_transport_replaced_once(env: dict[str, Any]) -> None:
    pool = make_pool()
    assert run_command(env["host"], "true", env["options"], pool).ok
    (entry,) = pool._entries.values()
    entry.transport.open_error = EOFError()  # dead, but not yet noticed
    r = run_command(env["host"], "true", env["options"], pool)
    assert r.ok and r.connection_reused is False
    again = run_command(env["host"], "true", env["options"], pool)
    assert again.ok and again.connection_reused is True
    pool.close()


def test_session_refused_on_fresh_transport_is_error(env: dict[str, Any]) -> None:
    r = run(env, make_pool(open_error=paramiko.ChannelException(1, "Administratively prohibited")))
    assert r.status is Status.ERROR and "refused a new session" in (r.error or "")


def test_bad_jump_spec_is_error(env: dict[str, Any]) -> None:
    r = run(env, make_pool(), jump="user@bastion:notaport")
    assert r.status is Status.ERROR and "bad jump host" in (r.error or "")


def test_sudo_password_env_missing_is_error(env: dict[str, Any]) -> None:
    r = run(env, make_pool(), become=True, become_password_env="SUDO_PW_MISSING")
    assert r.status is Status.ERROR and "SUDO_PW_MISSING" in (r.error or "")


def test_pool_idle_ttl_closes_transport(env: dict[str, Any]) -> None:
    now = [0.0]
    pool = make_pool()
    pool._clock = lambda: now[0]
    pool.idle_ttl = 10
    assert run_command(env["host"], "true", env["options"], pool).ok
    (entry,) = pool._entries.values()
    transport = entry.transport
    now[0] = 11.0
    pool.sweep()
    assert len(pool) == 0 and not transport.is_active()
    pool.close()


def test_pool_is_bounded(env: dict[str, Any]) -> None:
    pool = make_pool()
    pool.max_size = 2
    for port in (2222, 2223, 2224):
        host = Host.from_dict({**env["host"].to_dict(), "port": port})
        options = ExecOptions.from_dict({**env["options"].to_dict(), "accept_new_host_keys": True})
        assert run_command(host, "true", options, pool).ok
    assert len(pool) == 2
    pool.close()


def test_recorded_key_starts_on_its_own_line(env: dict[str, Any]) -> None:
    env["known"].write_text(env["known"].read_text().rstrip("\n"))  # hand-edited, no final newline
    options = ExecOptions.from_dict({**env["options"].to_dict(), "accept_new_host_keys": True})
    host = Host.from_dict({**env["host"].to_dict(), "port": 2201})
    assert run_command(host, "true", options, make_pool()).ok
    lines = env["known"].read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("[10.0.0.1]:2201 ssh-rsa ")
    assert run_command(env["host"], "true", options, make_pool()).ok  # first entry intact


@pytest.mark.parametrize("reported", [b"0", b"1", b"00001"])
def test_implausible_pid_is_never_killed(reported: bytes) -> None:
    out = CappedBuffer(100)
    marked = _MarkedStdout(out)
    marked.feed(b"FLEET-PID " + reported + b"\nhello\n")
    marked.flush()
    assert marked.pid is None and out.text() == "hello\n"

    class NoChannel:
        def open_session(self, timeout: float | None = None) -> None:
            raise AssertionError("kill attempted for an implausible PID")

    confirmed, note = kill_remote(NoChannel(), int(reported), become=False)
    assert confirmed is False and "no usable PID" in note


def test_timeout_with_pid_1_kills_nothing(env: dict[str, Any]) -> None:
    class PidOne(FakeChannel):
        def exec_command(self, command: str) -> None:
            self.command = command
            self.out.insert(0, b"FLEET-PID 1\n")

    hung = PidOne([b"partial\n"], [], None, hang=True)
    killer = FakeChannel([b"gone\n"], [], 0)
    r = run(env, make_pool(channels=[hung, killer]))
    assert r.status is Status.TIMEOUT and r.remote_kill_confirmed is False
    assert killer.command == ""  # no kill channel was used


def _line(marker: str, names: str, name: str) -> str:
    k = key(name)
    return f"{marker}{names} {k.get_name()} {k.get_base64()}\n".lstrip()


def test_cert_authority_line_is_skipped_not_fatal(env: dict[str, Any]) -> None:
    # A valid OpenSSH line that paramiko cannot parse; fleet does not do host certs.
    genuine = env["known"].read_text()
    env["known"].write_text(_line("@cert-authority ", "*.example.com", "ca") + genuine)
    assert run(env, make_pool()).ok
    env["known"].write_text(_line("@cert-authority ", "[10.0.0.1]:2222", "genuine"))
    r = run(env, make_pool())  # a CA line alone does not make the key known
    assert r.status is Status.HOSTKEY_REJECTED and "unknown host key" in (r.error or "")


@pytest.mark.parametrize("names", ["[10.0.0.1]:2222", "*", "[10.0.0.*]:2222,other"])
def test_revoked_key_is_rejected(env: dict[str, Any], names: str) -> None:
    env["known"].write_text(env["known"].read_text() + _line("@revoked ", names, "genuine"))
    options = ExecOptions.from_dict({**env["options"].to_dict(), "accept_new_host_keys": True})
    r = run_command(env["host"], "true", options, make_pool())
    assert r.status is Status.HOSTKEY_REJECTED
    assert "REVOKED" in (r.error or "") and fingerprint(key("genuine")) in (r.error or "")


def test_revoked_for_another_host_only_does_not_matter(env: dict[str, Any]) -> None:
    revoked = _line("@revoked ", "[10.0.0.9]:2222", "genuine")
    env["known"].write_text(env["known"].read_text() + revoked + "garbage line here\n")
    assert run(env, make_pool()).ok


def test_wildcard_and_negated_patterns(env: dict[str, Any]) -> None:
    env["known"].write_text(_line("", "[10.0.0.*]:2222,![10.0.0.2]:2222", "genuine"))
    assert run(env, make_pool()).ok
    other = Host.from_dict({**env["host"].to_dict(), "address": "10.0.0.2"})
    r = run_command(other, "true", env["options"], make_pool())
    assert r.status is Status.HOSTKEY_REJECTED and "unknown host key" in (r.error or "")


def test_pool_bound_holds_when_every_transport_is_busy(env: dict[str, Any]) -> None:
    pool = make_pool()
    pool.max_size = 1
    options = ExecOptions.from_dict({**env["options"].to_dict(), "accept_new_host_keys": True})
    from fleet.ssh.sshconfig import resolve_target

    busy = pool.acquire(resolve_target(env["host"], None), options)
    other = Host.from_dict({**env["host"].to_dict(), "port": 2299})
    assert run_command(other, "true", options, pool).ok  # connects although full...
    assert len(pool) == 1 and busy.transport.is_active()  # ...and is closed after use
    pool.release(busy)
    assert not pool._pending and not pool._keyed.get(("nothing",))
    pool.close()


def test_connect_failure_shared_and_remembered_briefly(env: dict[str, Any]) -> None:
    calls = []

    def refuse(address: str, port: int, timeout: float) -> Any:
        calls.append(port)
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    now = [0.0]
    pool = ConnectionPool(
        Connector(socket_factory=refuse, transport_factory=FakeTransport, agent=lambda: ())
    )
    pool._clock = lambda: now[0]
    assert run_command(env["host"], "true", env["options"], pool).status is Status.UNREACHABLE
    assert run_command(env["host"], "true", env["options"], pool).status is Status.UNREACHABLE
    assert calls == [2222]  # the second got the remembered failure
    now[0] = 1.0  # past connect_timeout (0.3 s): tried afresh
    assert run_command(env["host"], "true", env["options"], pool).status is Status.UNREACHABLE
    assert calls == [2222, 2222]
    # A request with another connect timeout (another run's) tries for itself: the
    # remembered failure would report a wait it did not make.
    longer = ExecOptions.from_dict({**env["options"].to_dict(), "connect_timeout": 5.0})
    assert run_command(env["host"], "true", longer, pool).status is Status.UNREACHABLE
    assert calls == [2222, 2222, 2222]
    pool.close()


def test_a_remembered_failure_reports_its_own_timeout_only(env: dict[str, Any]) -> None:
    # Issue 11 point 8: a run with a 10 s connect timeout never says "within 60 s".
    def hang(address: str, port: int, timeout: float) -> Any:
        raise TimeoutError("timed out")

    pool = ConnectionPool(
        Connector(socket_factory=hang, transport_factory=FakeTransport, agent=lambda: ())
    )
    pool._clock = lambda: 0.0
    slow = ExecOptions.from_dict({**env["options"].to_dict(), "connect_timeout": 60.0})
    first = run_command(env["host"], "true", slow, pool)
    second = run_command(env["host"], "true", env["options"], pool)  # 0.3 s
    assert "60" in (first.error or "")
    assert "60" not in (second.error or ""), second.error
    pool.close()
