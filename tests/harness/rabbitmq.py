"""A private `rabbitmq-server` on free loopback ports: its own node name, data, cookie and epmd.

Started straight from ``/usr/lib/rabbitmq/bin`` (Debian's ``/usr/sbin`` wrapper would
`su` to the rabbitmq user and read the system's env file), with every place it writes
under one directory, no plugins, and stopped by PID with its process group. Its epmd
listens on a private port too, and is killed at the end, so nothing outlives the test.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness import procs

LIBEXEC = Path("/usr/lib/rabbitmq/bin")


class RabbitStartError(RuntimeError):
    """rabbitmq-server did not come up; the message carries its log tail."""


def rabbitmq_binary() -> str | None:
    server = LIBEXEC / "rabbitmq-server"
    if server.exists():
        return str(server)
    return shutil.which("rabbitmq-server") or shutil.which("rabbitmq-server", path="/usr/sbin")


class RabbitMQServer:
    """``rabbitmq-server`` as node ``fleet-PORT@localhost`` on 127.0.0.1:PORT.

    `url` is the AMQP URL of the default vhost (guest/guest, allowed from loopback);
    `add_vhost()` makes a private vhost for one test.
    """

    def __init__(self, directory: Path | None = None, start_timeout: float = 90.0) -> None:
        binary = rabbitmq_binary()
        if binary is None:
            raise RabbitStartError("rabbitmq-server not found")
        self.dir = Path(directory or tempfile.mkdtemp(prefix="fleet-rabbit-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = procs.free_port("127.0.0.1")
        self.dist_port = procs.free_port("127.0.0.1")
        self.epmd_port = procs.free_port("127.0.0.1")
        self.node = f"fleet{self.port}@localhost"
        self.log_path = self.dir / "server.log"
        conf = self.dir / "rabbitmq.conf"
        conf.write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "log.console = true\nlog.file = false\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "env.conf").write_text("")
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.dir),  # the Erlang cookie lives here, for server and ctl
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbit.pid"),
            "RABBITMQ_SERVER_ERL_ARGS": f"-kernel inet_dist_listen_min {self.dist_port} "
            f"-kernel inet_dist_listen_max {self.dist_port} "
            "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        self._ctl_path = str(LIBEXEC / "rabbitmqctl") if LIBEXEC.exists() else "rabbitmqctl"
        self._proc = procs.spawn([binary], self.log_path, env=self.env, cwd=self.dir)
        self._wait_ready(start_timeout)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def vhost_url(self, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                status = self._proc.poll()
                self.stop()
                raise RabbitStartError(
                    f"rabbitmq-server not ready (exit status {status}):\n"
                    + procs.log_tail(self.log_path, 40)
                )
            if self._answers_amqp():
                return
            time.sleep(0.2)

    def _answers_amqp(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(8).startswith(b"\x01")  # a Connection.Start frame
        except OSError:
            return False

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self._ctl_path, "-n", self.node, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )

    def add_vhost(self, name: str) -> str:
        """Create vhost `name` with full rights for guest; return its AMQP URL."""
        for args in (
            ("add_vhost", name),
            ("set_permissions", "-p", name, "guest", ".*", ".*", ".*"),
        ):
            done = self.ctl(*args)
            if done.returncode != 0:
                raise RabbitStartError(f"rabbitmqctl {args[0]}: {done.stderr.strip()[:300]}")
        return self.vhost_url(name)

    def stop(self) -> None:
        procs.stop(self._proc, timeout=20)
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                capture_output=True,
                env=self.env,
                timeout=10,
            )
