"""A run's messages reach a real Redis in a few pipelines, not one round trip each.

Redis counts the read events it serves (``INFO stats``: ``total_reads_processed``): a
client that waits for each reply costs one read per command, a pipeline one read for
many. The result backend lives in memory, so only the broker's traffic is counted.
Nothing consumes the queue, so every message can be read back.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import chord, group

from fleet.publishing import FleetCelery, publish
from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.integration.fleetcli import fleet_env, wait_until

MEMBERS = 250
QUEUE = "publish-test"


def _app(url: str) -> FleetCelery:
    app = FleetCelery("publish-test", broker=url, backend="cache+memory://", set_as_current=False)
    app.conf.task_serializer = "json"
    return app


def _canvas(app: FleetCelery) -> Any:
    members = [app.signature("fleet.run_on_host", args=(i,), queue=QUEUE) for i in range(MEMBERS)]
    return chord(group(members), app.signature("fleet.aggregate", queue=QUEUE), app=app)


def _reads(client: redis.Redis) -> int:
    return int(client.info("stats")["total_reads_processed"])


def test_publish_sends_a_chord_in_pipelines(fresh_redis: RedisServer) -> None:
    client = redis.Redis.from_url(fresh_redis.url)
    app = _app(fresh_redis.url)
    signature = _canvas(app)
    with app.connection_for_write() as conn:
        conn.ensure_connection()  # connecting is not publishing
    before = _reads(client)
    publish(signature, app)
    reads = _reads(client) - before - 1  # the INFO call itself

    raw = client.lrange(QUEUE, 0, -1)
    assert len(raw) == MEMBERS
    sent = sorted(json.loads(_body(item))[0][0] for item in raw)
    assert sent == list(range(MEMBERS))  # each member once, none lost in a flush
    # Celery alone needs a read per message. A pipeline of FLUSH_EVERY messages (a few
    # KiB each: the chord's callback travels in every member) takes Redis one read per
    # 16 KiB buffer (PROTO_IOBUF_LEN), so reads follow the bytes, not the messages.
    assert reads <= MEMBERS // 3, reads

    client.delete(QUEUE)
    before = _reads(client)
    _canvas(app).apply_async()  # the same chord, the way Celery sends it
    assert _reads(client) - before >= MEMBERS
    client.close()
    app.close()


def test_producer_is_chosen_only_inside_publish(fresh_redis: RedisServer) -> None:
    app = _app(fresh_redis.url)
    with app.producer_or_acquire() as first, app.producer_or_acquire() as second:
        assert first is not second  # outside `publish`: Celery's own pool
    app.close()


def _body(item: bytes) -> bytes:
    import base64

    return base64.b64decode(json.loads(item)["body"])


def test_publish_subscribes_to_no_result(fresh_redis: RedisServer) -> None:
    """The submitter follows a run through the run store: Celery's group result must not
    subscribe to a result channel per member (a SUBSCRIBE and an UNSUBSCRIBE per host)."""
    client = redis.Redis.from_url(fresh_redis.url)
    app = FleetCelery("publish-test", broker=fresh_redis.url, backend=fresh_redis.url)
    app.conf.task_serializer = "json"
    publish(_canvas(app), app)
    assert len(client.lrange(QUEUE, 0, -1)) == MEMBERS
    assert client.pubsub_channels("celery-task-meta-*") == []
    client.close()
    app.close()


def _down_at_the_second_pipeline(
    monkeypatch: pytest.MonkeyPatch, server: RedisServer, down_s: float
) -> threading.Thread:
    """Stop `server` as kombu sends its second publish pipeline, and start it again
    `down_s` seconds later (the returned thread: join it)."""
    from kombu.transport.redis import PublishBatch

    restart = threading.Timer(down_s, server.start)
    flushes = [0]
    real_flush = PublishBatch.flush

    def flush_during_a_restart(self: Any) -> None:
        flushes[0] += 1
        if flushes[0] == 2:
            server.stop()
            restart.start()
        real_flush(self)

    monkeypatch.setattr(PublishBatch, "flush", flush_during_a_restart)
    return restart


def test_a_broker_blip_mid_publish_sends_every_message_with_the_same_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarts (AOF on, as a broker runs) just as the second pipeline is sent:
    kombu never resends a pipeline ("delivery is uncertain"), so `publish` sends the
    canvas again, one message at a time, until it gets through. Every member
    arrives; those sent twice carry the same task id (the claims and Celery's chord
    count rely on it)."""
    server = RedisServer(tmp_path / "redis", persistent=True)
    app = _app(server.url)
    restarted = _down_at_the_second_pipeline(monkeypatch, server, down_s=0.3)
    try:
        publish(_canvas(app), app)
        restarted.join()
        client = redis.Redis.from_url(server.url)
        raw = client.lrange(QUEUE, 0, -1)
        client.close()
    finally:
        app.close()
        server.stop()
    members = [json.loads(_body(item))[0][0] for item in raw]
    ids = [json.loads(item)["headers"]["id"] for item in raw]
    assert sorted(set(members)) == list(range(MEMBERS))  # none lost
    assert len(raw) > MEMBERS  # the first pipeline's messages went out twice ...
    assert len(set(ids)) == MEMBERS  # ... with the ids they had
    assert len(set(zip(members, ids, strict=True))) == MEMBERS


def test_a_run_published_through_a_broker_restart_runs_every_host_once(
    tmp_path: Path,
    ssh_fleet: SSHFleet,
    start_worker: Any,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same end to end: Redis (broker, results and run store, AOF on) is down for 3 s
    from the moment a run's second pipeline goes out, with workers consuming the first
    (one sending gives up after the 3 s connect timeout at most: `publish` sends again
    until 8 s have passed). Every host runs once (the ledger), and the run's chord fires
    once: the copies of the messages sent twice are ignored by the workers, not
    counted."""

    import fleet.publishing
    from fleet.api import run
    from fleet.settings import Settings

    server = RedisServer(tmp_path / "redis", persistent=True)
    try:
        env = fleet_env(server.url, ssh_fleet.known_hosts, tmp_path / "home")
        workers = [start_worker(name=n, concurrency=4, env=env) for n in ("a", "b")]
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("FLEET_INVENTORY", str(ssh_fleet.write_inventory(tmp_path / "inv.yaml")))
        monkeypatch.setattr(fleet.publishing, "FLUSH_EVERY", 2)  # 6 hosts: 3 pipelines
        restarted = _down_at_the_second_pipeline(monkeypatch, server, down_s=3.0)
        handle = run(ledger.command("sleep 0.5"), "web", settings=Settings.load())
        restarted.join()
        report = handle.wait(timeout=60)
        # The report is whole once every host has its result; the chord callback is
        # sent after that, by the worker that stored the last one.
        wait_until(lambda: _worker_logs(workers).count("Task fleet.aggregate[") >= 2, timeout=20)
        time.sleep(1.0)  # room for a second callback, were the chord to fire twice
    finally:
        server.stop()
    assert report is not None and len(report.results) == len(ssh_fleet.hosts)
    assert {r.status.value for r in report.results} == {"ok"}, report.results
    for host in ssh_fleet.hosts:
        assert ledger.lines(host.name) == [handle.run_id]
    logs = _worker_logs(workers)
    assert logs.count("Task fleet.aggregate[") == 2, logs  # received and succeeded, once
    assert "ignored" in logs  # the copies of the first pipeline's messages


def _worker_logs(workers: list[Any]) -> str:
    return "".join(w.log_text() for w in workers)
