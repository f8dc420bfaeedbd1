"""Fault matrix #22: an --env value reaches the command and nothing else: no Redis key,
no worker log at DEBUG, no report, no process list on the host; --env-from resolves only
declared worker variables (fleet.runenv, fleet.stdin_env)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses

SECRET = "s3cr3t-VALUE"


def _ssh_inventory(path: Path, fleet: SSHFleet, **extra: Any) -> Path:
    host = fleet.hosts[0]
    entry = {
        "address": host.address, "port": host.port, "user": fleet.user,
        "identity_file": str(fleet.client_key), **extra,
    }  # fmt: skip
    path.write_text(yaml.safe_dump({"groups": {"web": {"hosts": {host.name: entry}}}}))
    return path


def _cmdlines(exclude: set[int]) -> list[bytes]:
    """Every process's argv on this machine (the hosts' sshd sessions are local)."""
    lines = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) not in exclude:
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    lines.append(f.read())
            except OSError:
                continue
    return lines


def _watch_process_list(proc: Any, needle: bytes, running: bytes) -> bool:
    """Scan every process's argv while the CLI `proc` runs; True once a process with
    `running` in its argv was seen (the command ran meanwhile). Asserts `needle` is
    never seen, except in the CLI's own argv (what the operator typed)."""
    seen_running = False
    while proc.poll() is None:
        for line in _cmdlines({proc.pid}):
            assert needle not in line, line
            seen_running = seen_running or running in line
        time.sleep(0.02)
    return seen_running


def _redis_dump(url: str) -> bytes:
    client = redis.Redis.from_url(url)
    out = []
    for key in client.scan_iter(count=1000):
        raw_kind: Any = client.type(key)
        kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        out.append(repr((key, value)).encode())
    client.close()
    return b"\n".join(out)


def test_env_value_reaches_the_command_and_no_key_log_report_or_process_list(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    worker = start_worker(name="debug", env=env, extra_args=("-l", "DEBUG"))
    cli = FleetCLI(_ssh_inventory(tmp_path / "inventory.yaml", ssh_fleet), env)
    html = tmp_path / "report.html"
    command = 'sleep 2; echo "got:$SECRET"'
    proc = cli.popen(["run", command, "-g", "web", "--env", f"SECRET={SECRET}", "--json",
                      "--html", str(html)])  # fmt: skip
    assert _watch_process_list(proc, SECRET.encode(), b"sleep 2")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    doc = json.loads(out)
    assert doc["results"][0]["stdout"] == f"got:{SECRET}\n"
    run_id = doc["run_id"]
    reports = [out.replace(f"got:{SECRET}", ""), html.read_text().replace(f"got:{SECRET}", "")]
    for args in (["report", run_id], ["report", run_id, "--json"], ["runs", "--json"], ["runs"]):
        shown = cli.run(args)
        assert shown.returncode in (0, 1), shown.stderr
        reports.append(shown.stdout.replace(f"got:{SECRET}", ""))
    for text in reports:
        assert SECRET not in text
    # The command's output holds the value (it printed it): everything else must not.
    dump = _redis_dump(fresh_redis.url).replace(f"got:{SECRET}".encode(), b"")
    assert SECRET.encode() not in dump
    assert b"***" in dump  # the names are there, with the values shown as ***
    log = worker.log_path.read_bytes()
    assert SECRET.encode() not in log
    # At DEBUG Celery logs each task's arguments (here they hold the name only).
    assert b"TaskPool: Apply" in log and b"fleet.run_on_host" in log


def test_env_over_connection_local_in_embedded_mode(tmp_path: Path) -> None:
    home = tmp_path / "home"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        yaml.safe_dump({"groups": {"local": {"hosts": {"me": {"connection": "local"}}}}})
    )
    cli = FleetCLI(inventory, {"FLEET_HOME": str(home), "FLEET_BROKER_URL": ""})
    command = 'sleep 2; echo "got:$SECRET"'
    proc = cli.popen(["run", command, "-g", "local", "--env", f"SECRET={SECRET}", "--json"])
    assert _watch_process_list(proc, SECRET.encode(), b"sleep 2")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    doc = json.loads(out)
    assert doc["results"][0]["stdout"] == f"got:{SECRET}\n"
    assert SECRET not in out.replace(f"got:{SECRET}", "")
    # The history: the value is in the stored output only, not in any other row or page.
    db = sqlite3.connect(home / "history.sqlite3")
    rows = [r for t in ("runs", "run_env") for r in db.execute(f"SELECT * FROM {t}")]
    db.close()
    assert SECRET not in repr(rows) and "***" in repr(rows)


def test_env_from_resolves_declared_worker_variables_only(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    worker_env = {**env, "FLEET_SECRET_ENV": "DEPLOY_*", "DEPLOY_TOKEN": "tok-VALUE",
                  "OTHER_SECRET": "other-VALUE", "INV_TOKEN": "inv-VALUE"}  # fmt: skip
    start_worker(name="refs", env=worker_env)
    inventory = _ssh_inventory(
        tmp_path / "inventory.yaml", ssh_fleet, env_from={"FROM_INV": "DEPLOY_TOKEN"}
    )
    cli = FleetCLI(inventory, env)
    rc, doc = cli.run_json(
        ["run", 'echo "$TOKEN|$FROM_INV"', "-g", "web", "--env-from", "TOKEN=DEPLOY_TOKEN"]
    )
    assert rc == 0, doc
    assert doc["results"][0]["stdout"] == "tok-VALUE|tok-VALUE\n"
    rc, doc = cli.run_json(
        ["run", ledger.command("true"), "-g", "web", "--env-from", "T=OTHER_SECRET"]
    )
    assert rc == 1 and set(statuses(doc).values()) == {"error"}
    error = doc["results"][0]["error"]
    assert "--env-from T=OTHER_SECRET" in error and "FLEET_SECRET_ENV" in error
    assert ledger.hosts() == []  # never contacted
    undeclared_inv = _ssh_inventory(tmp_path / "inv2.yaml", ssh_fleet, env_from={"X": "INV_TOKEN"})
    rc, doc = FleetCLI(undeclared_inv, env).run_json(["run", ledger.command("true"), "-g", "web"])
    assert rc == 1 and "env_from X=INV_TOKEN" in doc["results"][0]["error"]
    assert ledger.hosts() == []
    dump = _redis_dump(fresh_redis.url)
    for value in (b"tok-VALUE", b"other-VALUE", b"inv-VALUE"):
        assert value not in dump.replace(b"tok-VALUE|tok-VALUE", b"")


def test_env_under_sudo_with_a_password_reference_it_does_not_need(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    # The harness user is root: sudo needs no password and leaves it unread on stdin;
    # the wrapper skips it (per-invocation marker) and the command gets the value only.
    if shutil.which("sudo") is None:
        pytest.skip("sudo is not installed on the harness host")
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    worker_env = {**env, "FLEET_SECRET_ENV": "DEPLOY_SUDO", "DEPLOY_SUDO": "hunter2-sudo"}
    start_worker(name="sudo", env=worker_env)
    inventory = _ssh_inventory(
        tmp_path / "inventory.yaml", ssh_fleet, become=True, become_password_env="DEPLOY_SUDO"
    )
    rc, doc = FleetCLI(inventory, env).run_json(
        ["run", 'echo "$SECRET:$(id -un)"; cat', "-g", "web", "--env", f"SECRET={SECRET}"]
    )
    assert rc == 0, doc
    assert doc["results"][0]["stdout"] == f"{SECRET}:root\n"
    assert "hunter2" not in json.dumps(doc)


def test_redis_store_stages_values_with_a_ttl_and_drops_them(fresh_redis: RedisServer) -> None:
    from fleet.store.redis_store import RedisRunStore

    store = RedisRunStore.from_url(fresh_redis.url, prefix="envtest", retention=3600)
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        assert store.staged_env("r1") is None
        store.stage_env("r1", {"A": SECRET, "B": "x\ny"}, 120.5)
        assert store.staged_env("r1") == {"A": SECRET, "B": "x\ny"}
        assert 0 < client.ttl("envtest:run:r1:env") <= 121
        store.stage_env("r2", {"A": "1"}, 10**9)
        assert client.ttl("envtest:run:r2:env") <= 3600  # never beyond the retention
        store.drop_env("r1")
        assert store.staged_env("r1") is None and not client.exists("envtest:run:r1:env")
        client.set("envtest:run:r3:env", b"[not, an, object")
        assert store.staged_env("r3") is None  # tampered: read as no values
    finally:
        client.close()
        store.close()
