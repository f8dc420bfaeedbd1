"""`fleet ... | head`: the reader closing the pipe ends fleet quietly, as it ends `cat`.

Seen: `fleet hosts -g web | head -1` printed "fleet: internal error: BrokenPipeError"
and exited 70, a code that tells scripts fleet has a bug.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from fleet.errors import EXIT_BROKEN_PIPE


def test_a_closed_pipe_ends_fleet_quietly(tmp_path: Path) -> None:
    # More than a pipe's buffer (64 KiB) of output, so fleet is still writing.
    hosts = {f"host{i:05d}.example.org": {"address": "192.0.2.1"} for i in range(6000)}
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"groups": {"web": {"hosts": hosts}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(FLEET_INVENTORY=str(inventory), FLEET_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet", "hosts", "-g", "web"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(100)
    proc.stdout.close()  # `head -1` has what it wanted
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert err == ""
