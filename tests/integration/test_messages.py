"""What fleet puts in the broker, read raw from the Redis list, and what workers refuse.

Whoever can write to the broker can run commands on every host, and whoever can read
it sees every message: messages are JSON only (never pickle), carry an expiry at the
run's deadline, and hold no secret (passwords travel by reference, `password_env`).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import yaml
from kombu import Connection

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses, wait_until

SECRET = "hunter2"


def cluster_env(url: str, fleet: SSHFleet, tmp_path: Path) -> dict[str, str]:
    return fleet_env(url, fleet.known_hosts, tmp_path / "home")


def secret_inventory(path: Path, fleet: SSHFleet) -> Path:
    hosts = {
        h.name: {
            "address": h.address,
            "port": h.port,
            "user": fleet.user,
            "identity_file": str(fleet.client_key),
        }
        for h in fleet.hosts
    }
    group = {"hosts": hosts, "vars": {"password_env": "DB_PASS", "env": {"APP_MODE": "blue"}}}
    path.write_text(yaml.safe_dump({"groups": {"web": group}}))
    return path


def dump_everything(client: redis.Redis) -> bytes:
    """Every key and value in the database, whatever its type (SCAN, never KEYS)."""
    parts: list[bytes] = []
    for key in client.scan_iter(count=500):
        parts.append(key)
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"list":
            parts.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                parts.extend((field, value))
        elif kind == b"set":
            parts.extend(client.smembers(key))
        elif kind == b"zset":
            parts.extend(client.zrange(key, 0, -1))
        elif kind == b"stream":
            for _id, fields in client.xrange(key):
                for field, value in fields.items():
                    parts.extend((field, value))
        else:
            parts.append(repr(kind).encode())
    return b"\n".join(parts)


def test_task_messages_are_json_expiring_one_per_host_and_hold_no_secret(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    env = {
        **cluster_env(fresh_redis.url, ssh_fleet, tmp_path),
        "DB_PASS": SECRET,
        "FLEET_SECRET_ENV": "DB_PASS",  # the worker declares what password_env may name
    }
    cli = FleetCLI(secret_inventory(tmp_path / "inventory.yaml", ssh_fleet), env)
    names = sorted(h.name for h in ssh_fleet.hosts)
    client = redis.Redis.from_url(fresh_redis.url)
    # No worker yet: the messages wait in the queue where we can read them.
    command = ledger.command("echo $APP_MODE")
    proc = cli.popen(["run", command, "-g", "web", "--deadline", "30", "--timeout", "20", "--json"])
    wait_until(lambda: client.llen("fleet") == len(names), timeout=30)
    submitted = time.time()
    raw = client.lrange("fleet", 0, -1)
    hosts_seen = []
    run_ids = set()
    for item in raw:
        assert SECRET.encode() not in item
        envelope = json.loads(item)
        assert envelope["content-type"] == "application/json"
        assert envelope["properties"]["body_encoding"] == "base64"
        headers = envelope["headers"]
        assert headers["task"] == "fleet.run_on_host"
        body = base64.b64decode(envelope["body"])
        assert SECRET.encode() not in body
        args, kwargs, _embed = json.loads(body)
        assert kwargs == {}
        run_id, host, sent_command, options = args
        run_ids.add(run_id)
        hosts_seen.append(host["name"])
        assert host["password_env"] == "DB_PASS" and host["env"] == {"APP_MODE": "blue"}
        assert "vars" not in host
        assert sent_command == command
        assert isinstance(options, dict)
        # Flower shows the run and the host; Celery's own repr of the host's values
        # would cost the submitter more CPU than the rest of the message.
        assert headers["argsrepr"] == repr((run_id, host["name"]))
        # The chord counts its members in its own key: no result key per host.
        assert headers["ignore_result"] is True
        expires = datetime.fromisoformat(headers["expires"]).timestamp()
        assert submitted + 20 < expires < submitted + 31, headers["expires"]
    assert sorted(hosts_seen) == names  # one message per host
    assert len(run_ids) == 1
    assert ledger.hosts() == []

    start_worker(name="reader", concurrency=8, env=env)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert SECRET not in out and SECRET not in err
    doc = json.loads(out)
    assert doc["run_id"] in run_ids
    assert sorted(statuses(doc)) == names
    assert set(statuses(doc).values()) == {"ok"}
    assert {r["stdout"] for r in doc["results"]} == {"blue\n"}
    # After the run: the whole Redis (queue, results, chord state, run store) is clean.
    everything = dump_everything(client)
    assert doc["run_id"].encode() in everything  # the dump does see the run
    assert SECRET.encode() not in everything
    ledger.assert_at_most_once()
    client.close()


def _publish(url: str, args: list[Any], serializer: str) -> str:
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": "fleet.run_on_host",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "argsrepr": repr(args),
        "kwargsrepr": "{}",
        "origin": "attacker@nowhere",
        "ignore_result": True,
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    with Connection(url) as conn:
        conn.Producer().publish(
            [args, {}, embed],
            exchange="",
            routing_key="fleet",
            serializer=serializer,
            headers=headers,
        )
    return task_id


def test_worker_refuses_a_pickle_message(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    from fleet.canvas import task_host
    from fleet.command import ExecOptions
    from fleet.results import RunRecord, utc_now
    from fleet.store.redis_store import RedisRunStore

    env = cluster_env(fresh_redis.url, ssh_fleet, tmp_path)
    worker = start_worker(name="guard", concurrency=2, env=env)
    host = next(iter(_fleet_hosts(ssh_fleet)))
    # A live run for the host, so a message that got through would really run.
    store = RedisRunStore.from_url(fresh_redis.url)
    run = RunRecord(
        run_id="20260101-000000-feed01",
        command="x",
        pattern="web",
        hosts=(host.name,),
        created_at=utc_now(),
        deadline=time.time() + 60,
    )
    store.create_run(run, (host,))
    options = ExecOptions(
        connect_timeout=1,
        auth_timeout=2,
        known_hosts=str(ssh_fleet.known_hosts),
        user_known_hosts=None,
        ssh_config="none",
    ).to_dict()
    args = [run.run_id, task_host(host), ledger.command("echo pwned"), options]

    _publish(fresh_redis.url, args, serializer="pickle")
    wait_until(lambda: "pickle" in worker.log_text(), timeout=15)
    log = worker.log_text()
    assert "Refusing to deserialize untrusted content of type pickle" in log, log
    time.sleep(1.0)
    assert ledger.hosts() == []  # nothing ran
    assert store.results(run.run_id) == {}

    # The same task as JSON does run: the refusal was the content type, not the task.
    _publish(fresh_redis.url, args, serializer="json")
    wait_until(lambda: ledger.lines(host.name) == [run.run_id], timeout=20)
    wait_until(lambda: host.name in store.results(run.run_id), timeout=10)
    assert store.results(run.run_id)[host.name].status.value == "ok"
    store.close()


def _fleet_hosts(fleet: SSHFleet) -> list[Any]:
    from fleet.inventory.hosts import Host

    return [
        Host(
            name=h.name,
            address=h.address,
            port=h.port,
            user=fleet.user,
            identity_file=str(fleet.client_key),
        )
        for h in fleet.hosts
    ]
