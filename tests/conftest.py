"""Fixtures shared by every test: a clean environment, no user ssh config."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


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
