"""The paramiko floor, one process of it: the SSH library alone, no fleet, Celery or Redis.

    python bench/floor_ssh.py HOSTS.json THREADS

Started by bench/floor.py, one process per fleet worker it stands beside. HOSTS.json:
``{"user", "key", "known_hosts", "hosts": [[address, port], ...]}``. It prints
``ready`` once imported, then serves one phase per line read on stdin and answers each
with one JSON line ``{"ok": n, "failures": [...]}``:

- ``cold``: a new connection per host (TCP_NODELAY, paramiko's default kex, host key
  checked against known_hosts, public-key auth), then ``uptime`` on it, THREADS at once;
- ``warm``: ``uptime`` again on those live connections, THREADS at once;
- ``sleep``: ``sleep 1`` on the live connections, every host at once.

What a long-lived worker must at least spend per host with this library on this box:
fleet's rows sit above it by what fleet, Celery, Redis and the CLI add. The threads are
started before the first phase (as a worker's pool is), so no phase pays for them.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from queue import Queue
from typing import Any

import paramiko

TIMEOUT_S = 10.0  # connect, key exchange, session open: fleet's connect_timeout
#: Reading a command's output: fleet's command_timeout. With 1,000 sessions starting at
#: once per process (``sleep`` at N=2,000), the last ones wait well over 10 s for sshd.
COMMAND_TIMEOUT_S = 300.0
IDLE_POLL_S = 2.0


def known_keys(path: str) -> dict[str, str]:
    """``[addr]:port`` -> base64 key, parsed once (paramiko's lookup is linear)."""
    keys: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            keys[parts[0]] = parts[2]
    return keys


class Floor:
    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        self.user: str = spec["user"]
        self.key = paramiko.PKey.from_path(spec["key"])
        self.known = known_keys(spec["known_hosts"])
        self.hosts: list[tuple[str, int]] = [(a, int(p)) for a, p in spec["hosts"]]
        self.limit = threads
        self.transports: dict[tuple[str, int], paramiko.Transport] = {}
        self._jobs: Queue[tuple[Callable[[], None], threading.Semaphore]] = Queue()
        for _ in range(max(threads, len(self.hosts))):
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            job, slots = self._jobs.get()
            with slots:
                job()

    def connect(self, host: tuple[str, int]) -> None:
        sock = socket.create_connection(host, timeout=TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        transport.start_client(timeout=TIMEOUT_S)
        name = f"[{host[0]}]:{host[1]}"
        if self.known.get(name) != transport.get_remote_server_key().get_base64():
            transport.close()
            raise RuntimeError(f"{name}: host key not in known_hosts")
        transport.auth_publickey(self.user, self.key)
        # paramiko's reader thread wakes every 0.1 s on an idle connection: at 1,000
        # connections per process that alone fills a core. fleet's pool sets 2 s after
        # login (fleet.ssh.connect.IDLE_POLL_S); the floor does the same, or it would
        # not be a floor at N=2,000.
        sock.settimeout(IDLE_POLL_S)
        self.transports[host] = transport

    def execute(self, host: tuple[str, int], command: str) -> None:
        channel = self.transports[host].open_session(timeout=TIMEOUT_S)
        channel.settimeout(COMMAND_TIMEOUT_S)
        channel.exec_command(command)
        while channel.recv(32768):
            pass
        status = channel.recv_exit_status()
        channel.close()
        if status != 0:
            raise RuntimeError(f"{host}: exit {status}")

    def cold(self, host: tuple[str, int]) -> None:
        self.connect(host)
        self.execute(host, "uptime")

    def phase(self, name: str) -> dict[str, Any]:
        work: Callable[[tuple[str, int]], None]
        if name == "cold":
            work, slots = self.cold, threading.Semaphore(self.limit)
        elif name == "warm":
            work, slots = partial(self.execute, command="uptime"), threading.Semaphore(self.limit)
        else:
            work = partial(self.execute, command="sleep 1")
            slots = threading.Semaphore(len(self.hosts) or 1)
        done = threading.Semaphore(0)
        failures: list[str] = []

        def one(host: tuple[str, int]) -> Callable[[], None]:
            def job() -> None:
                try:
                    work(host)
                except Exception as exc:  # reported, counted as a failure
                    failures.append(f"{host[0]}:{host[1]}: {type(exc).__name__}: {exc}")
                finally:
                    done.release()

            return job

        for host in self.hosts:
            self._jobs.put((one(host), slots))
        for _ in self.hosts:
            done.acquire()
        return {"ok": len(self.hosts) - len(failures), "failures": failures[:5]}


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    floor = Floor(spec, int(sys.argv[2]))
    print("ready", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        print(json.dumps(floor.phase(name)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
