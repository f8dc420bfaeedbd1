"""`celery -A fleet beat` (or `python -m fleet beat`) subprocesses, stopped by PID."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.harness import procs
from tests.harness.workers import REPO_ROOT

_names = itertools.count(1)
READY_MARK = "fleet: beat:"  # InventoryScheduler's line once the schedules are loaded


class BeatStartError(RuntimeError):
    """Beat exited or never loaded its schedules; the message carries its log tail."""


class CeleryBeat:
    """A beat process over the test's Redis, with its inventory in `env`."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        via_fleet: bool = False,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 30.0,
    ) -> None:
        self.name = f"beat{next(_names)}"
        self.log_path = log_dir / f"{self.name}.log"
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        full_env["PYTHONPATH"] = str(REPO_ROOT)
        argv = (
            [sys.executable, "-m", "fleet", "beat", "-l", "DEBUG"]
            if via_fleet
            else [sys.executable, "-m", "celery", "-A", "fleet", "beat", "-l", "DEBUG"]
        )
        self._proc: subprocess.Popen[bytes] | None = procs.spawn(
            [*argv, *extra_args], self.log_path, env=full_env, cwd=log_dir
        )
        deadline = time.monotonic() + ready_timeout
        while READY_MARK not in self.log_text():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                status = self._proc.poll()
                self.stop()
                raise BeatStartError(
                    f"beat not ready (exit status {status}):\n" + procs.log_tail(self.log_path, 40)
                )
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            procs.stop(self._proc, timeout)
            self._proc = None


def run_beat_to_exit(
    env: Mapping[str, str], cwd: Path, *, via_fleet: bool, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run beat expecting it to stop by itself (a bad inventory, no broker)."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}
    argv = (
        [sys.executable, "-m", "fleet", "beat"]
        if via_fleet
        else [sys.executable, "-m", "celery", "-A", "fleet", "beat"]
    )
    return subprocess.run(
        argv, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )
