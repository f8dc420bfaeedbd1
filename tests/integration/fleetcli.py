"""Running the real `python -m fleet` CLI against the harness's services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FleetCLI:
    """`python -m fleet ...` with a fixed environment (broker, known_hosts, inventory).

    By default the checkout's fleet; `python` with `from_checkout=False` runs the fleet
    installed for that interpreter (a clean venv's), from `cwd`.
    """

    inventory: Path
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    cwd: Path = REPO
    from_checkout: bool = True

    def full_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        if self.from_checkout:
            env["PYTHONPATH"] = str(REPO)
        else:
            env.pop("PYTHONPATH", None)
        env["FLEET_INVENTORY"] = str(self.inventory)
        env.update(self.env)
        env.update(extra or {})
        return env

    def argv(self, args: Sequence[str]) -> list[str]:
        return [self.python, "-m", "fleet", *args]

    def run(
        self, args: Sequence[str], timeout: float = 120.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args),
            capture_output=True,
            text=True,
            env=self.full_env(env),
            cwd=self.cwd,
            timeout=timeout,
        )

    def popen(self, args: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.full_env(),
            cwd=self.cwd,
        )

    def run_json(self, args: Sequence[str], timeout: float = 120.0) -> tuple[int, Any]:
        proc = self.run([*args, "--json"], timeout=timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        try:
            doc = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"not JSON (rc={proc.returncode}): {proc.stdout!r} {proc.stderr}"
            ) from None
        return proc.returncode, doc


def fleet_env(redis_url: str, known_hosts: Path, home: Path) -> dict[str, str]:
    """The environment of a CLI (or worker) on the test cluster: small timeouts."""
    return {
        "FLEET_BROKER_URL": redis_url,
        "FLEET_RESULT_BACKEND": redis_url,
        "FLEET_KNOWN_HOSTS": str(known_hosts),
        "FLEET_CONNECT_TIMEOUT": "1",
        "FLEET_AUTH_TIMEOUT": "2",
        "FLEET_HOME": str(home),
    }


def statuses(doc: Mapping[str, Any]) -> dict[str, str]:
    return {r["host"]: r["status"] for r in doc["results"]}


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
