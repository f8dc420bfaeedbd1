"""The core modules import no framework: checked in a fresh interpreter."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

FRAMEWORKS = ("celery", "kombu", "paramiko", "redis")
CORE = [
    "fleet.errors",
    "fleet.inventory.hosts",
    "fleet.settings",
    "fleet.results",
    "fleet.inventory.loader",
]
# Modules that may not exist yet in every checkout: checked when present.
OPTIONAL = ["fleet.report"]


def imported_after(module: str) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def present(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("module", CORE + OPTIONAL)
def test_module_imports_no_framework(module: str) -> None:
    if not present(module):
        pytest.skip(f"{module} does not exist yet")
    loaded = imported_after(module)
    offenders = [m for m in loaded if m.split(".")[0] in FRAMEWORKS]
    assert not offenders, f"{module} pulls in {sorted({m.split('.')[0] for m in offenders})}"


def test_inventory_stack_loads_what_it_needs() -> None:
    loaded = imported_after("fleet.inventory.loader")
    assert "yaml" in loaded and "ClusterShell.NodeSet" in loaded
