"""Fixtures shared by every test: a clean environment, no user ssh config."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

# A test command started in the background by a non-interactive shell (`./.ci/run &`)
# inherits SIGINT ignored, and so would every CLI the tests start: a Python program
# keeps an inherited SIG_IGN, rightly (nohup's convention), and the Ctrl-C tests would
# send it in vain. A handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _clean_fleet_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Tests never see the developer's FLEET_* settings, ~/.ssh or ssh-agent."""
    for name in list(os.environ):
        if name.startswith("FLEET_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("FLEET_HOME", str(home / "fleet"))
    monkeypatch.setenv("FLEET_SSH_CONFIG", "none")
    yield
