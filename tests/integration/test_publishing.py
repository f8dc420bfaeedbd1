"""A run's messages reach a real Redis in a few pipelines, not one round trip each.

Redis counts the read events it serves (``INFO stats``: ``total_reads_processed``): a
client that waits for each reply costs one read per command, a pipeline one read for
many. The result backend lives in memory, so only the broker's traffic is counted.
Nothing consumes the queue, so every message can be read back.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from celery import chord, group

from fleet.publishing import FleetCelery, publish
from tests.harness.redis_server import RedisServer

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
