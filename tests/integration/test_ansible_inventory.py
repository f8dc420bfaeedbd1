"""Ansible inventories, exit signals and the implicit localhost, for real (issue 11
points 7 and 8): the `python -m fleet` CLI in embedded mode (no broker) over real sshd
hosts, from an INI and from an Ansible YAML inventory as an Ansible user writes them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.sshd import SSHFleet
from tests.integration.fleetcli import FleetCLI, statuses


def ini_inventory(path: Path, fleet: SSHFleet) -> Path:
    lines = ["# written as for Ansible", "[web]"]
    for h in fleet.hosts[:3]:
        lines.append(f"{h.name} ansible_host={h.address} ansible_port={h.port}")
    lines += ["", "[db]"]
    for h in fleet.hosts[3:5]:
        lines.append(f"{h.name}  ansible_host={h.address}  ansible_port={h.port}  role=db")
    lines += [
        "", "[prod:children]", "web", "db", "",
        "[prod:vars]", f"ansible_user={fleet.user}",
        f"ansible_ssh_private_key_file={fleet.client_key}", "",
    ]  # fmt: skip
    path.write_text("\n".join(lines))
    return path


def yaml_inventory(path: Path, fleet: SSHFleet) -> Path:
    hosts = {h.name: {"ansible_host": h.address, "ansible_port": h.port} for h in fleet.hosts[:4]}
    doc = {
        "all": {
            "vars": {
                "ansible_user": fleet.user,
                "ansible_ssh_private_key_file": str(fleet.client_key),
            },
            "children": {"web": {"hosts": hosts}, "prod": {"children": {"web": None}}},
        }
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def embedded(inventory: Path, fleet: SSHFleet) -> FleetCLI:
    return FleetCLI(inventory, {"FLEET_KNOWN_HOSTS": str(fleet.known_hosts)})


def run_json(cli: FleetCLI, args: list[str]) -> tuple[int, dict[str, Any]]:
    code, doc = cli.run_json(args, timeout=180)
    assert isinstance(doc, dict)
    return code, doc


def test_run_from_an_ini_inventory(ssh_fleet: SSHFleet, tmp_path: Path) -> None:
    cli = embedded(ini_inventory(tmp_path / "hosts.ini", ssh_fleet), ssh_fleet)
    code, doc = run_json(cli, ["run", "echo $FLEET_HOST", "--group", "prod:!db", "--timeout", "20"])
    names = [h.name for h in ssh_fleet.hosts[:3]]
    assert code == 0 and statuses(doc) == dict.fromkeys(names, "ok"), doc
    assert {r["host"]: r["stdout"] for r in doc["results"]} == {n: f"{n}\n" for n in names}
    code, doc = run_json(cli, ["run", "true", "--group", "db"])
    assert code == 0 and set(statuses(doc)) == {h.name for h in ssh_fleet.hosts[3:5]}


def test_run_from_an_ansible_yaml_inventory(ssh_fleet: SSHFleet, tmp_path: Path) -> None:
    cli = embedded(yaml_inventory(tmp_path / "inventory.yml", ssh_fleet), ssh_fleet)
    code, doc = run_json(cli, ["run", "id -un", "--group", "prod", "--timeout", "20"])
    assert code == 0 and set(statuses(doc).values()) == {"ok"}, doc
    assert len(doc["results"]) == 4
    assert {r["stdout"] for r in doc["results"]} == {f"{ssh_fleet.user}\n"}


def test_a_bad_ini_inventory_lists_every_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "hosts"  # no extension: INI by its content
    path.write_text("[web]\nw1 ansible_port=x\nw2 ansible_ssh_common_args='-o A=b'\n[web:oops]\n")
    proc = FleetCLI(path).run(["hosts", "all"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"fleet: {path}: line 2: web.hosts.w1.ansible_port: "), lines
    assert lines[1].startswith(f"fleet: {path}: line 3: web.hosts.w2.ansible_ssh_common_args:")
    assert lines[2].startswith(f"fleet: {path}: line 4: ") and len(lines) == 3


@pytest.mark.parametrize("sig", ["KILL", "TERM"])
def test_exit_signal_over_ssh(ssh_fleet: SSHFleet, tmp_path: Path, sig: str) -> None:
    cli = embedded(ini_inventory(tmp_path / "hosts.ini", ssh_fleet), ssh_fleet)
    host = ssh_fleet.hosts[0].name
    code, doc = run_json(cli, ["run", f"echo before; kill -{sig} $$", "--group", host])
    (result,) = doc["results"]
    assert code == 1 and result["status"] == "failed", result
    assert (result["exit_code"], result["exit_signal"]) == (None, sig)
    assert result["error"] == f"killed by signal {sig}" and result["stdout"] == "before\n"
    code, doc = run_json(cli, ["run", "exit 3", "--group", host])  # an exit code: no signal
    assert (doc["results"][0]["exit_code"], doc["results"][0]["exit_signal"]) == (3, None)


def run_outside(directory: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """`python -m fleet ARGS` in `directory`, with no FLEET_INVENTORY: the default
    ./inventory.yaml, which is missing there."""
    cli = FleetCLI(directory / "inventory.yaml", cwd=directory)
    env = {k: v for k, v in cli.full_env().items() if k != "FLEET_INVENTORY"}
    return subprocess.run(
        cli.argv(args), capture_output=True, text=True, cwd=directory, env=env, timeout=180
    )


def test_implicit_localhost_outside_any_inventory(tmp_path: Path) -> None:
    """As Ansible's implicit localhost: `localhost` works with no inventory (exit signals
    are reported locally too); another pattern says how to name an inventory."""
    proc = run_outside(tmp_path, ["run", "echo hi from $FLEET_HOST", "-g", "localhost", "--json"])
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["results"]
    assert (result["host"], result["stdout"]) == ("localhost", "hi from localhost\n")
    proc = run_outside(tmp_path, ["run", "kill -KILL $$", "--group", "localhost", "--json"])
    (result,) = json.loads(proc.stdout)["results"]
    assert proc.returncode == 1 and result["exit_signal"] == "KILL", result
    proc = run_outside(tmp_path, ["run", "uptime", "--group", "local"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "-i PATH or FLEET_INVENTORY" in proc.stderr and "'localhost'" in proc.stderr
