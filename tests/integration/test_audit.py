"""The audit log end to end (issue 10 point 7): every submit and cancel appends one entry
to a Redis Stream (or the embedded history), `fleet audit` lists them, no environment
value is in it, and a tampered entry is skipped with a warning."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import yaml

from fleet.signing import create_keys
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, wait_until

SECRET = "hunter2-audit-value"


def who() -> str:
    return f"{pwd.getpwuid(os.getuid()).pw_name}@{os.uname().nodename}"


def audit_json(cli: FleetCLI, *args: str) -> tuple[list[dict[str, Any]], str]:
    proc = cli.run(["audit", "--json", *args])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc: list[dict[str, Any]] = json.loads(proc.stdout)
    return doc, proc.stderr


def test_submit_and_cancel_are_audited_in_redis(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    start_worker(name="audit", env=env)
    cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml"), env)
    # $USER says someone else: the audit asks the password database.
    proc = cli.run(
        ["run", "true", "-g", "web", "--env", f"TOKEN={SECRET}", "--json"],
        env={"USER": "mallory", "LOGNAME": "mallory"},
    )
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)["run_id"]

    # A second run on a queue nobody consumes, still running when it is cancelled.
    lonely = FleetCLI(
        ssh_fleet.write_inventory(tmp_path / "lonely.yaml", extra_vars={"queue": "nobody"}), env
    )
    follower = lonely.popen(["run", "sleep 1", "-g", "web", "--json"])
    try:
        second: list[str] = []

        def submitted() -> bool:
            runs = json.loads(cli.run(["runs", "--json"]).stdout)
            second[:] = [r["run_id"] for r in runs if r["run_id"] != first]
            return bool(second)

        wait_until(submitted, timeout=60, interval=0.5)
        cancel = cli.run(["cancel", second[0]])
        assert cancel.returncode == 0 and "cancelled" in cancel.stdout, cancel.stderr
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert json.loads(out)["state"] == "cancelled", err
    assert cli.run(["cancel", second[0]]).returncode == 0  # nothing to cancel: no entry

    entries, stderr = audit_json(cli)
    assert [(e["action"], e["run_id"]) for e in entries] == [
        ("cancel", second[0]),
        ("submit", second[0]),
        ("submit", first),
    ], stderr
    for e in entries:
        assert e["who"] == who() and e["signer"] is None
        assert e["host_count"] == len(ssh_fleet.hosts) and e["pattern"] == "web"
        assert e["when"].endswith("+00:00")
    assert entries[2]["command"] == "true" and entries[2]["options"]["env"] == {"TOKEN": "***"}
    runs = {r["run_id"]: r for r in json.loads(cli.run(["runs", "--json"]).stdout)}
    assert runs[first]["user"] == who()

    client = redis.Redis.from_url(fresh_redis.url)
    try:
        raw = client.xrange("fleet:audit")
        assert len(raw) == 3
        assert all(SECRET.encode() not in value for _, data in raw for value in data.values())
        assert 0 < client.ttl("fleet:audit") <= 90 * 86400

        # Tampered entries: skipped with a warning naming them; the others are listed.
        good = json.loads(raw[-1][1][b"entry"])
        bad_ids = [
            client.xadd("fleet:audit", {"entry": json.dumps(good | {"host_count": "\x1b[2J"})}),
            client.xadd("fleet:audit", {"entry": "{not json"}),
            client.xadd("fleet:audit", {"other": "x"}),
        ]
    finally:
        client.close()
    entries, stderr = audit_json(cli)
    assert [e["run_id"] for e in entries] == [second[0], second[0], first]
    for bad in bad_ids:
        assert bad.decode() in stderr
    assert "unreadable" in stderr and "\x1b" not in stderr

    # --since and --limit; the table.
    assert len(audit_json(cli, "--since", "1h")[0]) == 3
    assert audit_json(cli, "--since", "2999-01-01")[0] == []
    assert [e["action"] for e in audit_json(cli, "--limit", "1")[0]] == ["cancel"]
    table = cli.run(["audit"])
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "WHO"] and len(lines) == 4
    assert first in lines[3] and "submit" in lines[3] and who() in lines[3]
    bad = cli.run(["audit", "--since", "last tuesday"])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--since" in bad.stderr


def test_a_signed_submit_names_its_signer(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    pair = create_keys(tmp_path / "keys", "fleet-ops")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(pair.cert, trusted / pair.cert.name)
    env = {
        **fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home"),
        "FLEET_SIGNING_KEY": str(pair.key),
        "FLEET_SIGNING_CERT": str(pair.cert),
        "FLEET_SIGNING_CERT_STORE": str(trusted),
    }
    start_worker(name="signed-audit", env=env)
    cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml"), env)
    rc, doc = cli.run_json(["run", "true", "-g", "web"])
    assert rc == 0, doc
    [entry], _ = audit_json(cli)
    assert entry["run_id"] == doc["run_id"] and entry["who"] == who()
    assert entry["signer"] is not None and "fleet-ops" in entry["signer"]
    [run] = json.loads(cli.run(["runs", "--json"]).stdout)
    assert run["user"] == f"{entry['signer']} ({who()})"


def test_embedded_runs_are_audited_in_the_history(tmp_path: Path) -> None:
    assert "FLEET_BROKER_URL" not in os.environ
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        yaml.safe_dump({"groups": {"local": {"hosts": {"localhost": {"connection": "local"}}}}})
    )
    cli = FleetCLI(inventory, {})
    started = time.time()
    proc = cli.run(["run", "true", "-g", "local", "--env", f"TOKEN={SECRET}", "--json"])
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    entries, _ = audit_json(cli)
    assert [(e["action"], e["run_id"], e["host_count"]) for e in entries] == [("submit", run_id, 1)]
    assert entries[0]["who"] == who() and SECRET not in json.dumps(entries)
    assert datetime.fromisoformat(entries[0]["when"]).timestamp() >= started - 1
    table = cli.run(["audit", "--since", "10m"])
    assert table.returncode == 0 and run_id in table.stdout
