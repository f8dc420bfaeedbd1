"""What an operator sees on a terminal: colour, progress, and host output made harmless.

Runs in embedded mode (local group, no services) under a real pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

INVENTORY = "groups:\n  local:\n    hosts:\n      localhost: {connection: local}\n"


def run_on_pty(
    tmp_path: Path, command: str, extra_env: dict[str, str] | None = None
) -> tuple[int, str]:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k != "NO_COLOR"}
    env.update(
        PYTHONPATH=str(REPO),
        FLEET_HOME=str(tmp_path / "home"),
        FLEET_INVENTORY=str(inventory),
        TERM="xterm-256color",
        COLUMNS="100",
        **(extra_env or {}),
    )
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet", "run", command, "--group", "local"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        cwd=tmp_path,
        close_fds=True,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(controller)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def test_terminal_output_has_colour_and_summary(tmp_path: Path) -> None:
    rc, screen = run_on_pty(tmp_path, "echo hello")
    assert rc == 0, screen
    assert "\x1b[" in screen
    assert "hello" in screen and "1 host: 1 ok" in screen
    assert "Traceback" not in screen


def test_no_color_is_honoured(tmp_path: Path) -> None:
    rc, screen = run_on_pty(tmp_path, "echo hello", {"NO_COLOR": "1"})
    assert rc == 0, screen
    # The progress bar may still move the cursor and use bold, but sets no colour.
    colours = re.findall(r"\x1b\[([0-9;]*)m", screen)
    for params in colours:
        for code in params.split(";"):
            assert not (code.startswith(("3", "4", "9")) and len(code) == 2), params
    assert "1 host: 1 ok" in screen


def test_host_output_cannot_drive_the_terminal(tmp_path: Path) -> None:
    rc, screen = run_on_pty(tmp_path, r"printf 'A\033[2JB\033]0;owned\007C\rD\n'")
    assert rc == 0, screen
    assert "\x1b[2J" not in screen and "\x1b]0;owned" not in screen
    assert "\\x1b[2J" in screen and "\\r" in screen
