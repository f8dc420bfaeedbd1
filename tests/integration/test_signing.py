"""Signed task messages (fleet.signing) against real Redis and real signing workers.

The attacker can write to Redis. Forged messages are written straight into the queue's
Redis list, built from a genuine message a signed submitter left there: unsigned, signed
by a key whose certificate no worker trusts, and the genuine signature over a changed
body. Each runs nothing (no marker file, an empty ledger, no result in the run) and
leaves one line in the worker's log. The genuine message, moved to the same queue
afterwards, does run: the forgeries differ from it only where the signature looks.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import yaml

from fleet.signing import KeyPair, create_keys
from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import REPO, FleetCLI, fleet_env, statuses, wait_until

SEP = b"\x00\x01"  # celery.security.serialization.DEFAULT_SEPARATOR
REFUSED = "fleet: refused a task message"


def _signing_env(pair: KeyPair, store: Path | None = None) -> dict[str, str]:
    env = {"FLEET_SIGNING_KEY": str(pair.key), "FLEET_SIGNING_CERT": str(pair.cert)}
    if store is not None:
        env["FLEET_SIGNING_CERT_STORE"] = str(store)
    return env


def _trusting(tmp_path: Path, *pairs: KeyPair) -> Path:
    store = tmp_path / "trusted"
    store.mkdir()
    for pair in pairs:
        shutil.copy(pair.cert, store / pair.cert.name)
    return store


def test_a_signed_run_completes_and_the_worker_says_signing_is_on(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    pair = create_keys(tmp_path / "keys", "fleet-ops")
    env = {
        **fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home"),
        **_signing_env(pair, _trusting(tmp_path, pair)),
    }
    worker = start_worker(name="signer", env=env)
    lines = [line for line in worker.log_text().splitlines() if "message signing" in line]
    assert len(lines) == 1 and "message signing ON: signing as CN=fleet-ops" in lines[0]

    cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml"), env)
    rc, doc = cli.run_json(["run", ledger.command("true"), "-g", "web"])
    assert rc == 0, doc
    assert set(statuses(doc).values()) == {"ok"}
    assert all(ledger.lines(h.name) == [doc["run_id"]] for h in ssh_fleet.hosts)
    # The chord callback, signed by the worker, verified by a worker.
    wait_until(lambda: "fleet.aggregate[" in worker.log_text(), timeout=20)
    log = worker.log_text()
    assert REFUSED not in log and "Traceback" not in log


def test_a_worker_without_signing_says_so(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    worker = start_worker(name="plain", env=env)
    assert "message signing OFF" in worker.log_text()


def _envelope(raw: bytes) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(raw)
    return envelope


def _signed_parts(envelope: dict[str, Any]) -> list[bytes]:
    """Celery's auth payload: signer and signature (each base64), content type,
    encoding, JSON body (celery.security.serialization.SecureSerializer._pack)."""
    payload = base64.b64decode(base64.b64decode(envelope["body"]))
    return payload.split(SEP, 4)


def _pack(parts: list[bytes]) -> bytes:
    return base64.b64encode(SEP.join(parts))


def _requeue(client: redis.Redis, envelope: dict[str, Any], body: bytes, content_type: str) -> str:
    """`envelope` with a fresh id and `body`, pushed where the worker's queue is read."""
    forged = json.loads(json.dumps(envelope))
    task_id = str(uuid.uuid4())
    forged["headers"]["id"] = forged["headers"]["root_id"] = task_id
    forged["properties"]["correlation_id"] = task_id
    forged["properties"]["delivery_tag"] = str(uuid.uuid4())
    forged["properties"]["delivery_info"]["routing_key"] = "fleet"
    forged["content-type"] = content_type
    forged["body"] = base64.b64encode(body).decode()
    client.lpush("fleet", json.dumps(forged))
    return task_id


def _sign_as(pair: KeyPair, body: Any) -> bytes:
    from celery.security.certificate import Certificate
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    serializer = SecureSerializer(
        PrivateKey(pair.key.read_text()), Certificate(pair.cert.read_text()), None, "sha256"
    )
    payload = serializer.serialize(body)  # base64 text
    return payload.encode() if isinstance(payload, str) else bytes(payload)


def test_forged_messages_run_nothing_on_a_signing_worker(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    ops = create_keys(tmp_path / "keys", "ops")
    mallory = create_keys(tmp_path / "mallory", "mallory")  # in no worker's store
    env = {
        **fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home"),
        **_signing_env(ops, _trusting(tmp_path, ops)),
    }
    # The worker allows local hosts: the signature is the only thing in the way.
    worker = start_worker(name="guard", env={**env, "FLEET_ALLOW_LOCAL": "1"})
    inventory = tmp_path / "inventory.yaml"
    local = {"connection": "local"}
    inventory.write_text(
        yaml.safe_dump({"groups": {"held": {"hosts": {"me": local}, "queue": "held"}}})
    )
    cli = FleetCLI(inventory, env)
    client = redis.Redis.from_url(fresh_redis.url)
    genuine_marker = tmp_path / "genuine"
    # No worker reads `held`: the signed message waits there for the attacker to copy.
    proc = cli.popen(
        ["run", ledger.command(f"touch {genuine_marker}"), "-g", "held", "--deadline", "180",
         "--json"]
    )  # fmt: skip
    wait_until(lambda: client.llen("held") == 1, timeout=60)
    raw = client.lindex("held", 0)
    assert raw is not None
    envelope = _envelope(raw)
    assert envelope["content-type"] == "application/data"  # signed
    parts = _signed_parts(envelope)
    args, kwargs, embed = json.loads(parts[4])
    run_id = args[0]

    def body_running(marker: Path) -> list[Any]:
        changed = list(args)
        changed[2] = ledger.command(f"touch {marker}")
        return [changed, kwargs, embed]

    forged = {name: tmp_path / f"forged-{name}" for name in ("unsigned", "unknown", "changed")}
    unsigned = json.dumps(body_running(forged["unsigned"])).encode()
    _requeue(client, envelope, unsigned, "application/json")
    _requeue(
        client, envelope, _sign_as(mallory, body_running(forged["unknown"])), "application/data"
    )
    changed = [*parts[:4], json.dumps(body_running(forged["changed"])).encode()]
    _requeue(client, envelope, _pack(changed), "application/data")

    wait_until(lambda: worker.log_text().count(REFUSED) >= 3, timeout=30)
    time.sleep(1.0)  # anything that slipped through would have started by now
    log = worker.log_text()
    refusals = [line for line in log.splitlines() if REFUSED in line]
    assert len(refusals) == 3, log
    assert sum("not signed: this worker accepts only signed messages" in r for r in refusals) == 1
    assert sum("not in FLEET_SIGNING_CERT_STORE" in r for r in refusals) == 1
    assert sum("signature does not verify against its body" in r for r in refusals) == 1
    assert all("task=fleet.run_on_host" in r for r in refusals[1:]), refusals
    # One line each: no body dump, no traceback.
    assert "Traceback" not in log and "body:" not in log, log
    assert not any(marker.exists() for marker in forged.values())
    assert ledger.hosts() == []
    from fleet.store.redis_store import RedisRunStore

    store = RedisRunStore.from_url(fresh_redis.url)
    assert store.results(run_id) == {}
    assert worker.is_running

    # The genuine message itself, on the same queue, runs: it is only the signature.
    client.lpush("fleet", raw)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert statuses(json.loads(out)) == {"me": "ok"}
    assert genuine_marker.exists() and ledger.lines("me") == [run_id]
    assert not any(marker.exists() for marker in forged.values())
    store.close()
    client.close()


def _start_to_exit(
    argv: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    full.update(env, PYTHONPATH=str(REPO))
    return subprocess.run(argv, capture_output=True, text=True, env=full, cwd=cwd, timeout=60)


def test_a_half_signing_set_up_is_refused_at_start_in_one_line(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    pair = create_keys(tmp_path / "keys", "ops")
    base = {
        "FLEET_BROKER_URL": fresh_redis.url,
        "FLEET_HOME": str(tmp_path / "home"),
        "FLEET_INVENTORY": str(tmp_path / "inventory.yaml"),
    }
    (tmp_path / "inventory.yaml").write_text(
        yaml.safe_dump({"groups": {"l": {"hosts": {"me": {"connection": "local"}}}}})
    )
    key_only = {**base, "FLEET_SIGNING_KEY": str(pair.key)}
    other = create_keys(tmp_path / "other", "other")
    no_own_cert = {**base, **_signing_env(pair, _trusting(tmp_path, other))}
    cases = [
        (key_only, "FLEET_SIGNING_CERT is not set, but FLEET_SIGNING_KEY is"),
        (
            {**base, **_signing_env(pair, tmp_path / "missing")},
            f"FLEET_SIGNING_CERT_STORE {tmp_path / 'missing'}: no such directory",
        ),
        (no_own_cert, "does not hold this worker's own certificate"),
    ]
    for env, words in cases:
        for argv in (
            [sys.executable, "-m", "fleet", "worker", "-c", "1"],
            [sys.executable, "-m", "celery", "-A", "fleet", "worker", "-c", "1", "-P", "threads"],
        ):
            done = _start_to_exit(argv, env, tmp_path)
            lines = [line for line in done.stderr.splitlines() if line.startswith("fleet:")]
            assert done.returncode != 0, done.stderr
            assert len(lines) == 1 and words in lines[0], done.stderr
            assert "Traceback" not in done.stderr, done.stderr
            if argv[2] == "fleet":
                assert done.returncode == 2
    # A submitter: exit 2, one line, nothing published.
    done = _start_to_exit(
        [sys.executable, "-m", "fleet", "run", "true", "-g", "l"], key_only, tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "fleet: FLEET_SIGNING_CERT is not set, but FLEET_SIGNING_KEY is: signing needs the key "
        "and its certificate (create them with: fleet keys init DIR)"
    ]
    assert redis.Redis.from_url(fresh_redis.url).llen("fleet") == 0
