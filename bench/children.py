"""Long-lived helper processes of the bench (the floors, the API submitter): started
once, then driven one line at a time on stdin, each answering one JSON line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from bench.fleetrows import BenchFailure

REPO = Path(__file__).resolve().parents[1]


def ask(procs: Sequence[subprocess.Popen[str]], line: str) -> list[dict[str, Any]]:
    """Send `line` to every child, then read one JSON answer from each."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    answers = []
    for proc in procs:
        answers.append(json.loads(readline(proc)))
    return answers


def readline(proc: subprocess.Popen[str]) -> str:
    stdout: IO[str] | None = proc.stdout
    assert stdout is not None
    line = stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr is not None else ""
        raise BenchFailure(f"floor process exited {proc.wait()}: {err[-2000:]}")
    return line


def spawn(argv: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else dict(env),
        cwd=REPO,
    )
    if readline(proc).strip() != "ready":
        raise BenchFailure(f"floor process {argv[1]} did not start")
    return proc


def stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    for proc in procs:
        try:
            if proc.stdin is not None:
                proc.stdin.write("quit\n")
                proc.stdin.close()
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
