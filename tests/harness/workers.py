"""Celery worker subprocesses (`celery -A fleet worker`), one per simulated machine."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.harness import procs

REPO_ROOT = Path(__file__).resolve().parents[2]
_names = itertools.count(1)


class WorkerStartError(RuntimeError):
    """The worker exited or never logged "ready."; the message carries its log tail."""


def celery_app_present() -> bool:
    return (REPO_ROOT / "fleet" / "celery.py").exists()


class CeleryWorker:
    """`python -m celery -A fleet worker -n NAME@testnode -Q QUEUES -c N -P POOL ...`.

    `env` is laid over this process's environment (tests already have FLEET_HOME and
    FLEET_SSH_CONFIG=none from the autouse fixture): pass FLEET_BROKER_URL,
    FLEET_RESULT_BACKEND, FLEET_KNOWN_HOSTS, ... there. The worker leads its own
    process group, so `kill()`/`stop()` also end the children it forked.

    By default fleet is imported from this checkout (on PYTHONPATH, run from the repo);
    `python` (another interpreter, e.g. a clean venv's) with `from_checkout=False` runs
    the fleet installed there instead, from `cwd`. `app`: the module ``-A`` names (the
    bench's no-op floor runs fleet's app with one more task). No prefetch flag is passed: the
    worker runs with what fleet's own Celery settings say, as a user's would.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        queues: Sequence[str] = ("fleet",),
        name: str | None = None,
        concurrency: int = 4,
        log_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 30.0,
        pool: str = "threads",
        python: str = sys.executable,
        cwd: Path = REPO_ROOT,
        from_checkout: bool = True,
        app: str = "fleet",
    ) -> None:
        self.name = name or f"w{next(_names)}"
        self.node_name = f"{self.name}@testnode"
        self.queues = tuple(queues)
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="fleet-worker-"))
        self.log_path = log_dir / f"{self.name}.log"
        full_env = dict(os.environ)
        if from_checkout:
            full_env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p
            )
        else:
            full_env.pop("PYTHONPATH", None)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env)
        self.env = full_env
        argv = [
            python, "-m", "celery", "-A", app, "worker",
            "-n", self.node_name,
            "-Q", ",".join(self.queues),
            "-c", str(concurrency),
            "-P", pool,
            "-l", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            *extra_args,
        ]  # fmt: skip
        self._returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = procs.spawn(
            argv, self.log_path, env=full_env, cwd=cwd
        )
        self._wait_ready(ready_timeout)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"worker {self.node_name} is not running")
        return self._proc.pid

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status once stopped or killed (None while running)."""
        return self._proc.poll() if self._proc is not None else self._returncode

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        marker = f"{self.node_name} ready."
        while marker not in self.log_text():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                status = self._proc.poll()
                self.stop()
                raise WorkerStartError(
                    f"worker {self.node_name} not ready (exit status {status}):\n"
                    + procs.log_tail(self.log_path, 40)
                )
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the worker and its process group (SIGKILL: a machine dying)."""
        if self._proc is not None:
            procs.kill(self._proc, sig)
            if sig == signal.SIGKILL:
                self._returncode = self._proc.returncode
                self._proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL the group if it lingers past `timeout`."""
        if self._proc is not None:
            procs.stop(self._proc, timeout)
            self._returncode = self._proc.returncode
            self._proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"CeleryWorker({self.node_name}, queues={self.queues}, running={self.is_running})"


#: The `start_worker` fixture: ``start_worker(queues=..., name=..., concurrency=..., env=...)``.
StartWorker = Callable[..., CeleryWorker]
