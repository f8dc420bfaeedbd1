"""A clean install: what a user gets from `pip install <project>`, no extras, works.

Fault class: "green CI, broken install". The test environment carries packages that the
runtime dependencies may not (pytest brings `packaging`, which kombu's Redis transport
imports). So each venv here holds fleet and its runtime dependencies only, installed
non-editable from the checkout, and a real worker and a real run start from it, away
from the checkout (another working directory, no PYTHONPATH).

Two venvs: `ci` (constraints/ci.txt, the versions CI is pinned to) and `floor`
(constraints/floor.txt, the oldest version of each dependency pyproject.toml claims).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import REPO, FleetCLI, fleet_env, statuses

INSTALL_TIMEOUT_S = 600


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module", params=["ci", "floor"])
def clean_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The interpreter of a fresh venv holding fleet and its runtime dependencies only."""
    venv = tmp_path_factory.mktemp(f"venv-{request.param}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    constraints = REPO / "constraints" / f"{request.param}.txt"
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "-c", str(constraints), str(REPO)],
        capture_output=True,
        text=True,
        env=_pip_env(),
        cwd=venv,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return python


def _in_venv(python: str, code: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_venv_holds_the_installed_fleet_and_no_test_extras(
    clean_python: str, tmp_path: Path
) -> None:
    where = _in_venv(clean_python, "import fleet; print(fleet.__file__)", tmp_path)
    assert Path(where).is_relative_to(Path(clean_python).parents[1]), where
    missing = _in_venv(
        clean_python,
        "import importlib.util as u; print([m for m in ('pytest', 'ruff', 'mypy', 'gevent')"
        " if u.find_spec(m)])",
        tmp_path,
    )
    assert missing == "[]"
    # Both brokers' transports and the Redis result backend load from the runtime
    # dependencies alone (kombu's Redis transport needs `packaging`: celery[redis]).
    loaded = _in_venv(
        clean_python,
        "import kombu.transport.redis, kombu.transport.pyamqp, celery.backends.redis; print('ok')",
        tmp_path,
    )
    assert loaded == "ok"
    # Installing fleet must not drop a celeryconfig module into site-packages, where it
    # would become every Celery app's configuration on the machine.
    assert (
        _in_venv(
            clean_python,
            "import importlib.util as u; print(u.find_spec('celeryconfig'))",
            tmp_path,
        )
        == "None"
    )


def test_a_clean_install_runs_a_worker_and_a_run(
    clean_python: str,
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    worker = start_worker(
        name="clean", env=env, python=clean_python, cwd=workdir, from_checkout=False
    )
    inventory = ssh_fleet.write_inventory(tmp_path / "inventory.yaml")
    cli = FleetCLI(inventory, env, python=clean_python, cwd=workdir, from_checkout=False)
    rc, doc = cli.run_json(["run", ledger.command("echo clean install"), "-g", "web"])
    assert rc == 0, doc
    assert sorted(statuses(doc)) == sorted(h.name for h in ssh_fleet.hosts)
    assert set(statuses(doc).values()) == {"ok"}
    assert {r["worker"] for r in doc["results"]} == {worker.node_name}
    assert {r["stdout"] for r in doc["results"]} == {"clean install\n"}
    ledger.assert_at_most_once()
    rc, runs = cli.run_json(["runs"])
    assert rc == 0 and [r["run_id"] for r in runs] == [doc["run_id"]]


def test_the_quick_start_runs_embedded_from_a_clean_install(
    clean_python: str, tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("groups:\n  local:\n    hosts:\n      localhost: {connection: local}\n")
    cli = FleetCLI(
        inventory, {"FLEET_HOME": str(tmp_path / "home")}, python=clean_python,
        cwd=tmp_path, from_checkout=False,
    )  # fmt: skip
    rc, doc = cli.run_json(["run", "echo embedded", "--group", "local"])
    assert rc == 0, doc
    assert [r["stdout"] for r in doc["results"]] == ["embedded\n"]
