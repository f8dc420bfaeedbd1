"""Long-lived helper processes of the bench (the floors, the API submitter): started
once, then driven one line at a time on stdin, each answering one JSON line.

Every failure of a child (it exits, says something else than asked, or does not answer
in time) is a `BenchFailure` carrying the tail of its stderr, which goes to a log file
(a pipe nobody reads would fill and stall the child)."""

from __future__ import annotations

import json
import queue
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.fleetrows import BenchFailure
from bench.measure import (
    Timing,
    box_ticks,
    busy_share,
    redis_commands,
    redis_reset_stats,
    tree_cpu,
)
from tests.harness.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0
#: The longest a child may take over one answer (a cold phase at N=2,000 takes ~30 s);
#: the same bound as a timed fleet CLI run.
ANSWER_TIMEOUT_S = 1800.0


class Child:
    """One helper process: `argv` with its stdout read by a thread, one line at a time."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.name = Path(argv[1]).name if len(argv) > 1 else argv[0]
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed in stop())
            prefix=f"bench-{self.name}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=None if env is None else dict(env),
            cwd=REPO,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            ready = self.readline(READY_TIMEOUT_S).strip()
            if ready != "ready":
                raise self._failure(f"said {ready[:200]!r} instead of 'ready'")
        except BenchFailure:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _failure(self, what: str) -> BenchFailure:
        self._log.flush()
        tail = Path(self._log.name).read_text(errors="replace")[-2000:]
        return BenchFailure(f"bench helper {self.name} {what}; its stderr:\n{tail}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError:
            raise self._failure(f"exited ({self.proc.wait()})") from None

    def readline(self, timeout: float = ANSWER_TIMEOUT_S) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise self._failure(f"did not answer within {timeout:.0f} s") from None
        if line is None:
            raise self._failure(f"exited ({self.proc.wait()})")
        return line

    def stop(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


def ask(children: Sequence[Child], line: str) -> list[dict[str, Any]]:
    """Send `line` to every child, then read one JSON answer from each."""
    for child in children:
        child.send(line)
    answers = []
    for child in children:
        text = child.readline()
        try:
            answers.append(json.loads(text))
        except json.JSONDecodeError:
            raise child._failure(f"answered {text[:200]!r}") from None
    return answers


def stop(children: Sequence[Child]) -> None:
    for child in children:
        child.stop()


def ask_measured(
    child: Child, pids: Sequence[int], redis: RedisServer
) -> tuple[dict[str, Any], Timing, dict[str, int]]:
    """Ask `child` (a submitter answering ``cpu_s`` and ``wall_s``) for one round and
    measure it: (answer, timing, Redis commands). `Timing.cpu` is the child's own CPU
    plus the workers' (`pids`); ``detail`` splits it and adds Redis's and the box's."""
    redis_reset_stats(redis.port)
    before = sum(tree_cpu(p) for p in pids)
    redis0, box0 = tree_cpu(redis.pid), box_ticks()
    (answer,) = ask([child], "go")
    busy = busy_share(box0, box_ticks())
    worker_cpu = sum(tree_cpu(p) for p in pids) - before
    detail = {
        "cli_cpu": answer["cpu_s"],
        "worker_cpu": worker_cpu,
        "redis_cpu": tree_cpu(redis.pid) - redis0,
        "box_busy": busy,
    }
    timing = Timing(answer.get("wall_s", 0.0), answer["cpu_s"] + worker_cpu, detail)
    return answer, timing, redis_commands(redis.port)
