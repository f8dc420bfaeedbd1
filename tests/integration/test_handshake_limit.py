"""The per-sshd handshake limit for real (issue 12, "never overload what you connect
through"): a jump host with OpenSSH's stock ``MaxStartups 10:30:100``, two workers, the
slot tables in Redis and SQLite, and a holder killed with its slots."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.ssh.handshakes import LINGER_S
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import MakeFleet, SSHFleet
from tests.integration.fleetcli import REPO, FleetCLI, fleet_env, statuses

# Opt-in evidence: FLEET_TEST_SHOW_UNLIMITED=1 also runs the same fleet with the limit
# off (0), expecting hosts lost to MaxStartups. Read at import: the autouse fixture
# clears FLEET_* variables for each test.
LIMITS = ["8"] + (["0"] if os.environ.get("FLEET_TEST_SHOW_UNLIMITED") == "1" else [])
HOSTS_BEHIND_JUMP = 100


def jumped_inventory(path: Path, jump: SSHFleet, targets: SSHFleet, keys: Path) -> Path:
    """Every target through `jump`, each with a key file of its own. The pool shares a
    jump host's transport only between hosts with the same credentials, so here the
    jump host sees one handshake per host (as it would from `ssh -J` per host, or from
    many worker processes): the load `MaxStartups` is about."""
    keys.mkdir()
    bastion = jump.hosts[0]
    hosts: dict[str, Any] = {}
    for target in targets.hosts:
        key = keys / target.name
        shutil.copy(jump.client_key, key)
        key.chmod(0o600)
        hosts[target.name] = {
            "address": target.address,
            "port": target.port,
            "user": jump.user,
            "identity_file": str(key),
            "jump": f"{jump.user}@{bastion.address}:{bastion.port}",
        }
    path.write_text(yaml.safe_dump({"groups": {"web": {"hosts": hosts}}}, sort_keys=False))
    return path


@pytest.mark.parametrize("limit", LIMITS)
def test_a_hundred_hosts_behind_a_stock_jump_host_all_ok(
    limit: str,
    make_ssh_fleet: MakeFleet,
    fresh_redis: RedisServer,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    jump = make_ssh_fleet(1, max_startups=None)  # sshd's own MaxStartups 10:30:100
    assert "MaxStartups" not in next(jump.dir.glob("sshd*/sshd_config")).read_text()
    targets = make_ssh_fleet(HOSTS_BEHIND_JUMP)
    # The targets accept the jump fleet's client key; known_hosts knows every host.
    with targets.authorized_keys.open("a") as keys:
        keys.write(jump.authorized_keys.read_text())
    known = tmp_path / "known_hosts"
    known.write_text(jump.known_hosts.read_text() + targets.known_hosts.read_text())
    env = fleet_env(fresh_redis.url, known, tmp_path / "home")
    # Generous: a loaded 2-core machine must not turn slowness into `unreachable`.
    env |= {"FLEET_CONNECT_TIMEOUT": "15", "FLEET_AUTH_TIMEOUT": "15"}
    env["FLEET_HANDSHAKES_PER_TARGET"] = limit
    start_worker(name="a", concurrency=64, env=env)
    start_worker(name="b", concurrency=64, env=env)
    inventory = jumped_inventory(tmp_path / "inventory.yaml", jump, targets, tmp_path / "keys")
    cli = FleetCLI(inventory, env)

    started = time.monotonic()
    rc, doc = cli.run_json(["run", "true", "-g", "web"], timeout=300)
    elapsed = time.monotonic() - started

    found = statuses(doc)
    counts = Counter(found.values())
    print(f"\nlimit {limit}: {dict(counts)} in {elapsed:.1f} s")
    assert len(found) == HOSTS_BEHIND_JUMP
    if limit == "0":  # the evidence: without the limit, the jump host drops handshakes
        errors = Counter(r["error"] for r in doc["results"] if r["status"] != "ok")
        print(f"why: {errors.most_common(2)}")
        assert counts["ok"] < HOSTS_BEHIND_JUMP
        return
    bad = [(r["host"], r["status"], r["error"]) for r in doc["results"] if r["status"] != "ok"]
    assert rc == 0 and counts == {"ok": HOSTS_BEHIND_JUMP}, bad[:5]
    # Both workers took part, so the limit was shared, not one process's alone.
    assert len({r["worker"] for r in doc["results"]}) == 2
    # Every slot was given back: after the linger the keys are gone.
    import redis

    client = redis.Redis.from_url(fresh_redis.url)
    time.sleep(2.5)
    assert not list(client.scan_iter("fleet:slots:*"))


HOLDER = """
import sys, time
from fleet.store import open_store
from fleet.settings import Settings
store = open_store(Settings.load())
for i in range(2):
    assert store.take_slot("handshake:10.0.0.1:22", f"dead{i}", 2, float(sys.argv[1]))
print("held", flush=True)
time.sleep(120)
"""


def kill_a_holder(env: dict[str, str], hold_s: float) -> float:
    """A process takes both slots of 10.0.0.1:22 for `hold_s` seconds and is SIGKILLed;
    returns when that was (monotonic)."""
    full = dict(os.environ) | env | {"PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(hold_s)],
        stdout=subprocess.PIPE,
        env=full,
        cwd=REPO,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    return time.monotonic()


def slots_free_themselves(store: Any, hold_s: float, killed_at: float) -> None:
    assert not store.take_slot("handshake:10.0.0.1:22", "me", 2, 30)  # still held
    assert store.take_slot("handshake:10.0.0.1:2222", "me", 2, 30)  # another sshd
    while not store.take_slot("handshake:10.0.0.1:22", "me", 2, 30):
        assert time.monotonic() - killed_at < hold_s + 10, "a dead holder's slot stayed taken"
        time.sleep(0.1)
    assert store.take_slot("handshake:10.0.0.1:22", "me", 2, 30)  # its own: taken already
    assert store.take_slot("handshake:10.0.0.1:22", "other", 2, 30)
    assert not store.take_slot("handshake:10.0.0.1:22", "third", 2, 30)
    store.release_slot("handshake:10.0.0.1:22", "me")
    assert store.take_slot("handshake:10.0.0.1:22", "third", 2, 30)


def test_a_killed_holders_slots_free_themselves_in_redis(fresh_redis: RedisServer) -> None:
    import redis

    from fleet.store.redis_store import RedisRunStore

    env = {"FLEET_BROKER_URL": fresh_redis.url, "FLEET_RESULT_BACKEND": fresh_redis.url}
    killed_at = kill_a_holder(env, hold_s=2.0)
    store = RedisRunStore.from_url(fresh_redis.url)
    client = redis.Redis.from_url(fresh_redis.url)
    names = list(client.scan_iter("fleet:slots:*"))
    assert len(names) == 1 and 0 < client.ttl(names[0]) <= 4  # expires with its holders
    try:
        slots_free_themselves(store, 2.0, killed_at)
    finally:
        store.close()


def test_a_killed_holders_slots_free_themselves_in_sqlite(tmp_path: Path) -> None:
    from fleet.store.sqlite_store import SqliteRunStore

    killed_at = kill_a_holder({"FLEET_HOME": str(tmp_path)}, hold_s=1.0)
    store = SqliteRunStore(tmp_path / "history.sqlite3")
    try:
        slots_free_themselves(store, 1.0, killed_at)
    finally:
        store.close()


def test_embedded_runs_count_their_handshakes_in_the_history(
    ssh_fleet: SSHFleet, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {
        "FLEET_KNOWN_HOSTS": str(ssh_fleet.known_hosts),
        "FLEET_HOME": str(home),
        "FLEET_HANDSHAKES_PER_TARGET": "1",
    }
    cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml"), env)
    rc, doc = cli.run_json(["run", "true", "-g", "web"], timeout=120)
    assert rc == 0 and set(statuses(doc).values()) == {"ok"}, doc
    with sqlite3.connect(home / "history.sqlite3") as db:
        # The embedded worker took a slot per handshake, and gave each back (a given
        # back slot lingers LINGER_S, then the next take purges it: some may be gone).
        rows = db.execute("SELECT until FROM slots").fetchall()
    assert 1 <= len(rows) <= len(ssh_fleet.hosts)
    assert all(until <= time.time() + LINGER_S for (until,) in rows)
