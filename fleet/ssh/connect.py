"""Opening one authenticated transport, every phase bounded, every failure in words.

Phases: TCP connect (a socket we create, with TCP_NODELAY), SSH banner and key
exchange, host key check, authentication. The socket and transport factories are
injected so tests can script each failure kind without a network.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import paramiko

from fleet.command import ExecOptions
from fleet.results import Status
from fleet.ssh.banner import BannerWatch, banner_failure
from fleet.ssh.errors import ConnectFailure
from fleet.ssh.hostkeys import HostKeyPolicy, host_key_name
from fleet.ssh.proxycommand import ProxySocket, open_proxy
from fleet.ssh.sshconfig import Target
from fleet.textsafe import make_visible_line

SocketFactory = Callable[[str, int, float], Any]
TransportFactory = Callable[[Any], Any]


class AgentConnection(Protocol):
    """An open ssh-agent connection (`paramiko.Agent`): its keys sign through it."""

    def get_keys(self) -> Sequence[paramiko.PKey]: ...

    def close(self) -> None: ...


# Called once per login that gets as far as the agent. Returns an open connection
# (closed by the Connector when authentication ends), fixed keys (tests), or None.
AgentSource = Callable[[], AgentConnection | Sequence[paramiko.PKey] | None]

_AGENT_PROBE_TIMEOUT = 1.0
_DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
_key_cache: dict[str, tuple[tuple[float, int], paramiko.PKey]] = {}
_key_lock = threading.Lock()


def open_tcp(address: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((address, port), timeout=timeout)
    # paramiko leaves Nagle on: every handshake round trip then waits on a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _Agent(paramiko.Agent):
    """paramiko.Agent, closed again when its first exchange with the agent fails
    (paramiko would leave the socket to the garbage collector)."""

    def __init__(self) -> None:
        try:
            super().__init__()
        except BaseException:
            self.close()
            raise


def open_agent() -> AgentConnection | None:
    """A connection to the ssh-agent at SSH_AUTH_SOCK, or None (unset, dangling,
    not a socket, or not answering). The caller closes it.

    AgentKey objects point back at their Agent (a reference cycle), so a connection
    nobody closes lives until the cyclic GC runs: one socket per login.
    """
    path = os.environ.get("SSH_AUTH_SOCK")
    if not path:
        return None
    # paramiko does not close its socket when the connect fails: a dangling
    # SSH_AUTH_SOCK (the session that started the agent ended) or a stale socket
    # file (the agent was killed) would leak one per login. Check first.
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode) or not _answers(path):
            return None
    except OSError:
        return None
    try:
        return _Agent()
    except (paramiko.SSHException, OSError):
        return None


def _answers(path: str) -> bool:
    """Whether something listens on the unix socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_AGENT_PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def tcp_failure(exc: BaseException, target: Target, timeout: float) -> ConnectFailure:
    """An operator's words for a failed TCP connect."""
    where = f"{target.address}:{target.port}"
    if isinstance(exc, socket.gaierror):
        return ConnectFailure(Status.UNREACHABLE, f"cannot resolve host name {target.address!r}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return ConnectFailure(
            Status.UNREACHABLE, f"connect to {where} timed out after {_seconds(timeout)}"
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailure(Status.UNREACHABLE, f"connection refused by {where}")
    code = getattr(exc, "errno", None)
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return ConnectFailure(Status.UNREACHABLE, f"no route to {where}")
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ConnectFailure(Status.UNREACHABLE, f"cannot connect to {where}: {detail}")


#: Socket timeout of a logged-in transport's reader thread (paramiko sets 0.1 s).
IDLE_POLL_S = 2.0


def _poll_idle_slowly(transport: Any) -> None:
    # paramiko's reader thread wakes on every socket timeout (0.1 s) to look for a close
    # or a rekey; a pool of idle connections then burns CPU (measured: about 0.1 CPU s/s
    # per 200 connections). After login nothing needs the quick wake-up: close() wakes
    # the reader by closing the socket, and a rekey waits at most this long to start.
    sock = getattr(transport, "sock", None)
    sock = sock.sock if isinstance(sock, BannerWatch) else sock
    if isinstance(sock, socket.socket):
        sock.settimeout(IDLE_POLL_S)


class Connector:
    """Makes authenticated transports; pass fakes for the factories in tests."""

    def __init__(
        self,
        *,
        socket_factory: SocketFactory = open_tcp,
        transport_factory: TransportFactory = paramiko.Transport,
        agent: AgentSource = open_agent,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._socket_factory = socket_factory
        self._transport_factory = transport_factory
        self._agent = agent
        self._environ = os.environ if environ is None else environ

    def open_socket(self, target: Target, options: ExecOptions) -> Any:
        if target.proxy_command:  # ssh_config ProxyCommand: its stdin/stdout
            return open_proxy(target.proxy_command)
        try:
            return self._socket_factory(target.address, target.port, options.connect_timeout)
        except OSError as exc:
            raise tcp_failure(exc, target, options.connect_timeout) from None

    def connect(self, target: Target, sock: Any, options: ExecOptions) -> Any:
        """Handshake, host key check and login over `sock` (a socket or a jump channel).

        Raises `ConnectFailure`; the socket and transport are closed when it does.
        """
        watch = BannerWatch(sock)
        try:
            transport = self._transport_factory(watch)
        except Exception:
            sock.close()
            raise
        try:
            self._handshake(transport, target, options, watch)
            self._authenticate(transport, target, options)
            _poll_idle_slowly(transport)
        except BaseException as exc:
            transport.close()
            sock.close()
            if isinstance(exc, ConnectFailure) and isinstance(sock, ProxySocket):
                raise sock.explain(exc) from None
            raise
        return transport

    def _handshake(
        self, transport: Any, target: Target, options: ExecOptions, watch: BannerWatch
    ) -> None:
        policy = HostKeyPolicy.from_paths(
            options.known_hosts, options.user_known_hosts, options.accept_new_host_keys
        )
        name = host_key_name(target.address, target.port)
        security = transport.get_security_options()
        security.key_types = policy.preferred_algorithms(name, tuple(security.key_types))
        timeout = options.connect_timeout
        where = f"{target.address}:{target.port}"
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        done = threading.Event()
        try:
            transport.start_client(event=done)
            if not done.wait(timeout):
                if not getattr(transport, "remote_version", ""):
                    raise banner_failure(watch, where, timeout, _seconds(timeout))
                raise ConnectFailure(
                    Status.UNREACHABLE,
                    f"SSH key exchange did not finish within {_seconds(timeout)}",
                )
            if not transport.is_active():
                raise transport.get_exception() or paramiko.SSHException("negotiation failed")
        except ConnectFailure:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            text = str(exc)
            if "protocol banner" in text or "Indecipherable protocol version" in text:
                raise banner_failure(watch, where, timeout, _seconds(timeout)) from None
            raise _handshake_failure(exc, target, timeout) from None
        policy.verify(name, transport.get_remote_server_key())

    def _authenticate(self, transport: Any, target: Target, options: ExecOptions) -> None:
        deadline = time.monotonic() + options.auth_timeout
        tried: list[str] = []
        notes: list[str] = []

        def attempt(label: str, call: Callable[[], object]) -> bool:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectFailure(
                    Status.AUTH_FAILED,
                    f"authentication as {target.user} did not finish within "
                    f"{_seconds(options.auth_timeout)}",
                )
            transport.auth_timeout = remaining
            tried.append(label)
            try:
                call()
            except paramiko.BadAuthenticationType as exc:
                notes.append(f"the host allows only {', '.join(exc.allowed_types)}")
                return False
            except paramiko.AuthenticationException as exc:
                if "timeout" in str(exc).lower():
                    raise ConnectFailure(
                        Status.AUTH_FAILED,
                        f"authentication as {target.user} did not finish within "
                        f"{_seconds(options.auth_timeout)}",
                    ) from None
                return False
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise ConnectFailure(
                    Status.UNREACHABLE,
                    f"connection lost during authentication: {exc or type(exc).__name__}",
                ) from None
            return bool(transport.is_authenticated())

        keys = list(target.identity_files)
        if not keys:
            keys = [p for p in map(os.path.expanduser, _DEFAULT_KEYS) if os.path.exists(p)]
        for path in keys:
            key = _load_key(path, notes)
            if key is not None and attempt(f"key {path}", _pk(transport, target.user, key)):
                return
        source = None if target.identities_only else self._agent()  # IdentitiesOnly
        connection: AgentConnection | None = None
        offered: Sequence[paramiko.PKey] = ()
        if isinstance(source, Sequence):
            offered = source
        elif source is not None:
            connection = source
        try:
            if connection is not None:
                offered = connection.get_keys()
            for key in offered:
                if attempt("an agent key", _pk(transport, target.user, key)):
                    return
        finally:
            # No more signing: the login succeeded or every agent key was refused.
            if connection is not None:
                connection.close()
        if target.password_env:
            password = self._environ.get(target.password_env)
            if password is None:
                notes.append(f"password_env {target.password_env} is not set on the worker")
            elif attempt(
                "password", lambda: transport.auth_password(target.user, password, fallback=False)
            ):
                return
        summary = ", ".join(dict.fromkeys(tried)) or "nothing (no key or password available)"
        extra = f" ({'; '.join(notes)})" if notes else ""
        raise ConnectFailure(
            Status.AUTH_FAILED,
            f"authentication failed for {target.label}: tried {summary}{extra}",
        )


def _pk(transport: Any, user: str, key: paramiko.PKey) -> Callable[[], object]:
    return lambda: transport.auth_publickey(user, key)


def _load_key(path: str, notes: list[str]) -> paramiko.PKey | None:
    """A private key, cached by (mtime, size); None (with a note) when unusable."""
    try:
        st = os.stat(path)
    except OSError:
        notes.append(f"key {path} not found")
        return None
    stamp = (st.st_mtime, st.st_size)
    with _key_lock:
        cached = _key_cache.get(path)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        key = paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        notes.append(f"key {path} is encrypted and no passphrase is available")
        return None
    except (paramiko.SSHException, OSError, ValueError) as exc:
        notes.append(f"key {path} cannot be read: {type(exc).__name__}")
        return None
    with _key_lock:
        _key_cache[path] = (stamp, key)
    return key


def _handshake_failure(exc: BaseException, target: Target, timeout: float) -> ConnectFailure:
    text = str(exc)
    where = f"{target.address}:{target.port}"
    if "Invalid SSH banner" in text or "Incompatible version" in text:
        return ConnectFailure(
            Status.UNREACHABLE, f"{where} is not an SSH-2 server ({make_visible_line(text)})"
        )
    if isinstance(exc, EOFError | ConnectionResetError) or not text:
        return ConnectFailure(
            Status.UNREACHABLE, f"{where} closed the connection during SSH negotiation"
        )
    if isinstance(exc, OSError):
        return tcp_failure(exc, target, timeout)
    return ConnectFailure(
        Status.ERROR, f"SSH negotiation with {where} failed: {make_visible_line(text)[:200]}"
    )
