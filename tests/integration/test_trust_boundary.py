"""Fault matrix #20: a distributed worker refuses what it does not allow, whatever the
task message asks (fleet.trust). Whoever can write to the broker can send these
messages; here fleet's own submitter sends them, which the worker cannot tell apart."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.stubs import HungListener
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses

WORKER_SECRET = "hunter2-on-the-worker"


def _inventory(path: Path, groups: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def test_connection_local_is_refused_unless_the_worker_allows_it(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    marker = tmp_path / "ran-on-the-worker"
    inventory = _inventory(
        tmp_path / "inventory.yaml", {"local": {"hosts": {"me": {"connection": "local"}}}}
    )
    cli = FleetCLI(inventory, env)
    start_worker(name="strict", env=env)
    rc, doc = cli.run_json(["run", f"touch {marker}; env", "-g", "local"])
    assert rc == 1 and statuses(doc) == {"me": "error"}
    assert "FLEET_ALLOW_LOCAL" in doc["results"][0]["error"]
    assert not marker.exists()
    assert doc["results"][0]["stdout"] == ""  # nothing of the worker's environment


def test_a_worker_that_allows_local_runs_it(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    inventory = _inventory(
        tmp_path / "inventory.yaml", {"local": {"hosts": {"me": {"connection": "local"}}}}
    )
    start_worker(name="lax", env={**env, "FLEET_ALLOW_LOCAL": "1"})
    rc, doc = FleetCLI(inventory, env).run_json(["run", "echo here", "-g", "local"])
    assert rc == 0 and doc["results"][0]["stdout"] == "here\n"


def test_an_undeclared_password_env_is_refused_before_any_connection(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    host = ssh_fleet.hosts[0]
    entry = {
        "address": host.address, "port": host.port, "user": ssh_fleet.user,
        "identity_file": str(ssh_fleet.client_key),
    }  # fmt: skip
    inventory = _inventory(
        tmp_path / "inventory.yaml",
        {
            "asks": {"hosts": {host.name: {**entry, "password_env": "WORKER_SECRET"}}},
            "declared": {"hosts": {"ok1": {**entry, "password_env": "DB_PASS"}}},
        },
    )
    worker_env = {**env, "WORKER_SECRET": WORKER_SECRET, "DB_PASS": "x", "FLEET_SECRET_ENV": "DB_*"}
    start_worker(name="secrets", env=worker_env)
    cli = FleetCLI(inventory, env)
    rc, doc = cli.run_json(["run", ledger.command("true"), "-g", "asks"])
    assert rc == 1 and statuses(doc) == {host.name: "error"}
    error = doc["results"][0]["error"]
    assert "'WORKER_SECRET' is not a secret this worker declares" in error
    assert WORKER_SECRET not in str(doc)
    assert ledger.hosts() == []  # never contacted
    rc, doc = cli.run_json(["run", "true", "-g", "declared"])
    assert rc == 0, doc  # a declared one is read (the key logs in; no password needed)


def test_trust_on_first_use_asked_by_a_message_is_not_taken(
    fresh_redis: RedisServer,
    make_ssh_fleet: object,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    fleet = make_ssh_fleet(1)  # type: ignore[operator]
    known = tmp_path / "worker_known_hosts"
    known.write_text("")  # the worker knows no key of this host
    env = fleet_env(fresh_redis.url, known, tmp_path / "home")
    inventory = fleet.write_inventory(tmp_path / "inventory.yaml")
    start_worker(name="tofu", env={**env, "FLEET_KNOWN_HOSTS": str(known)})
    cli = FleetCLI(inventory, env)
    rc, doc = cli.run_json(["run", "true", "-g", "web", "--accept-new-host-keys"])
    assert rc == 1 and set(statuses(doc).values()) == {"hostkey_rejected"}
    assert known.read_text() == ""  # byte-identical: nothing recorded


def test_a_worker_that_allows_trust_on_first_use_records_the_key(
    fresh_redis: RedisServer,
    make_ssh_fleet: object,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    fleet = make_ssh_fleet(1)  # type: ignore[operator]
    known = tmp_path / "worker_known_hosts"
    known.write_text("")
    env = fleet_env(fresh_redis.url, known, tmp_path / "home")
    worker_env = {**env, "FLEET_KNOWN_HOSTS": str(known), "FLEET_ACCEPT_NEW_HOST_KEYS": "1"}
    start_worker(name="tofu-ok", env=worker_env)
    cli = FleetCLI(fleet.write_inventory(tmp_path / "inventory.yaml"), env)
    rc, doc = cli.run_json(["run", "true", "-g", "web", "--accept-new-host-keys"])
    assert rc == 0, doc
    assert len(known.read_text().splitlines()) == 1
    # Without the submitter asking, the worker's permission alone records nothing new.
    rc, doc = cli.run_json(["run", "true", "-g", "web"])
    assert rc == 0  # the key is known now


def test_a_worker_pinned_to_its_inventory_takes_no_connection_values_from_messages(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    hung_listener: HungListener,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    # The worker's own file holds h02 with its real address. The submitter's inventory
    # (anyone who writes to the broker could say the same) points h02 at another server
    # and adds a host the worker does not know, with a secret reference.
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    real = ssh_fleet.hosts[0]
    own = ssh_fleet.write_inventory(tmp_path / "worker-inventory.yaml", hosts=[real])
    trap = {"address": hung_listener.address, "port": hung_listener.port, "user": "root"}
    inventory = _inventory(
        tmp_path / "inventory.yaml",
        {"web": {"hosts": {real.name: trap, "stranger": {**trap, "password_env": "DB_PASS"}}}},
    )
    worker_env = {**env, "FLEET_WORKER_INVENTORY": str(own), "DB_PASS": WORKER_SECRET,
                  "FLEET_SECRET_ENV": "DB_PASS"}  # fmt: skip
    start_worker(name="pinned", env=worker_env)
    rc, doc = FleetCLI(inventory, env).run_json(["run", ledger.command("true"), "-g", "web"])
    assert rc == 1
    assert statuses(doc) == {real.name: "ok", "stranger": "error"}
    by_host = {r["host"]: r for r in doc["results"]}
    assert by_host[real.name]["address"] == real.address  # the worker's value, not the message's
    assert "not in this worker's inventory" in by_host["stranger"]["error"]
    assert hung_listener.accepted == 0  # the other server was never contacted
    assert ledger.hosts() == [real.name]
