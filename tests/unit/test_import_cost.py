"""What a command imports: only what its path needs. Structural checks in a fresh
interpreter (which modules are loaded), never timings.

Not needed unless configured or used: ``cryptography``'s X.509 and key code (message
signing, `fleet.signing`), the Ansible inventory readers (`fleet.inventory.ansible_ini`,
`fleet.inventory.ansible_model`) for fleet's own YAML format, and the modules of the
other subcommands (`fleet.cli_audit`, ...). The positive cases show each check can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.signing import create_keys

REPO = Path(__file__).resolve().parents[2]
BROKER = "redis://127.0.0.1:1/0"  # nothing connects to it: the app is only built

FLEET_INVENTORY = """\
defaults: {user: deploy}
groups:
  g1:
    hosts:
      h1: {address: 127.0.0.1, port: 2222}
"""
ANSIBLE_INI = "[g1]\nh1 ansible_host=127.0.0.1 ansible_port=2222\n"

#: `cryptography` itself is imported by redis-py (``redis.utils`` checks whether it is
#: installed): on the run path only its submodules say whether fleet loaded it.
CRYPTO_CODE = ("cryptography.x509", "cryptography.hazmat.primitives.serialization")
ANSIBLE_READERS = ("fleet.inventory.ansible_ini", "fleet.inventory.ansible_model")
OTHER_SUBCOMMANDS = ("fleet.cli_audit", "fleet.cli_keys", "fleet.cli_service", "fleet.cli_transfer")

# Runs the CLI in-process, then writes the loaded module names to argv[1].
CLI = (
    "import json, sys\n"
    "from fleet.cli import main\n"
    "rc = main(sys.argv[2:])\n"
    "with open(sys.argv[1], 'w') as out: json.dump(sorted(sys.modules), out)\n"
    "raise SystemExit(rc)\n"
)
# What `fleet run` imports up to publishing (the modules, the Celery app built from the
# environment, the inventory loaded), without a broker to publish to.
RUN_PATH = (
    "import json, sys\n"
    "import fleet.cli, fleet.cli_common, fleet.console, fleet.runs, fleet.session\n"
    "import fleet.store.redis_store, fleet.inventory.loader, fleet.signing\n"
    "from fleet.celery import app\n"
    "from fleet.settings import Settings\n"
    "settings = Settings.load()\n"
    "assert app.conf.broker_url == settings.broker_url\n"
    "fleet.inventory.loader.select_hosts(settings.inventory, 'g1')\n"
    "with open(sys.argv[1], 'w') as out: json.dump(sorted(sys.modules), out)\n"
)


def _loaded(
    tmp_path: Path, code: str, *args: str, inventory: str = "inventory.yaml", **env: str
) -> set[str]:
    """The modules loaded by `code` in a fresh interpreter, with only the FLEET_*
    settings given here (and a fleet-format inventory unless another is named)."""
    out = tmp_path / "modules.json"
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env = {
        "FLEET_HOME": str(tmp_path / "home"),
        "FLEET_INVENTORY": str(tmp_path / inventory),
        "FLEET_SSH_CONFIG": "none",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), *args],
        env=base | env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(out.read_text()))


@pytest.fixture
def inventories(tmp_path: Path) -> Path:
    (tmp_path / "inventory.yaml").write_text(FLEET_INVENTORY)
    (tmp_path / "hosts.ini").write_text(ANSIBLE_INI)
    return tmp_path


def _none_of(names: tuple[str, ...], loaded: set[str]) -> list[str]:
    return [name for name in names if name in loaded]


def test_the_run_path_loads_no_signing_code_or_ansible_reader(inventories: Path) -> None:
    loaded = _loaded(inventories, RUN_PATH, FLEET_BROKER_URL=BROKER)
    assert {"fleet.celery", "fleet.store.redis_store", "fleet.inventory.loader"} <= loaded
    assert _none_of(CRYPTO_CODE + ANSIBLE_READERS + OTHER_SUBCOMMANDS, loaded) == []


@pytest.mark.parametrize("argv", [["hosts", "g1", "--json"], ["run", "--help"]])
def test_hosts_and_help_load_no_cryptography(inventories: Path, argv: list[str]) -> None:
    loaded = _loaded(inventories, CLI, *argv)
    assert "fleet.cli_parser" in loaded
    assert _none_of(("cryptography", *ANSIBLE_READERS, *OTHER_SUBCOMMANDS), loaded) == []


def test_an_ansible_inventory_loads_its_reader(inventories: Path) -> None:
    loaded = _loaded(inventories, CLI, "hosts", "g1", "--json", inventory="hosts.ini")
    assert set(ANSIBLE_READERS) <= loaded


def test_a_subcommand_loads_its_module_when_it_runs(inventories: Path) -> None:
    loaded = _loaded(inventories, CLI, "schedules")
    assert "fleet.cli_service" in loaded


def test_configured_signing_loads_cryptography(inventories: Path) -> None:
    pair = create_keys(inventories / "keys", "submitter", bits=2048)
    signing = {"FLEET_SIGNING_KEY": str(pair.key), "FLEET_SIGNING_CERT": str(pair.cert)}
    loaded = _loaded(inventories, RUN_PATH, FLEET_BROKER_URL=BROKER, **signing)
    assert set(CRYPTO_CODE) <= loaded
