"""The run store contract against a real, private redis-server, plus Redis's own duties:
a TTL on every key, redacted and prompt errors, riding out a restart, eviction warning."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from fleet.errors import BackendError, FleetError, RunNotFoundError
from fleet.results import RunReport
from fleet.store.protocol import FINALIZER, PROCESS_ID, RunStore
from fleet.store.redis_store import RedisRunStore
from tests.harness.redis_server import RedisServer
from tests.store_contract import (
    COLON_HOST,
    MakeStore,
    StoreContract,
    make_hosts,
    make_run,
    ok,
)

pytestmark = pytest.mark.integration

_prefixes = itertools.count()


# `redis_server` (shared, session) and `fresh_redis` (this test's own, free to kill)
# come from tests/integration/conftest.py.


@pytest.fixture
def prefix() -> str:
    # Each test its own prefix: tests share the server but never each other's keys.
    return f"t{next(_prefixes)}"


@pytest.fixture(params=["bytes", "decoded"])
def make_store(
    request: pytest.FixtureRequest, redis_server: RedisServer, prefix: str
) -> Iterator[MakeStore]:
    opened: list[RedisRunStore] = []

    def make(retention: int = 7 * 86400) -> RunStore:
        if request.param == "bytes":
            store = RedisRunStore.from_url(redis_server.url, prefix=prefix, retention=retention)
        else:
            client = redis.Redis.from_url(redis_server.url, decode_responses=True)
            store = RedisRunStore(client, prefix=prefix, retention=retention)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


class TestRedisStore(StoreContract):
    pass


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def _fill_a_run(store: RunStore) -> None:
    hosts = make_hosts("web01", COLON_HOST)
    run = make_run("r1", hosts)
    store.create_run(run, hosts)
    assert store.claim_host("r1", COLON_HOST, "w1")
    store.save_result("r1", ok(COLON_HOST))
    store.add_event("r1", {"type": "started", "host": "web01"})
    store.set_state("r1", "finished", finished_at="2026-01-01T00:00:00+00:00")
    store.save_report(RunReport.assemble(run, [ok(COLON_HOST)]))


def test_every_key_is_under_the_prefix_and_has_a_ttl(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    store = RedisRunStore.from_url(redis_server.url, prefix=prefix, retention=3600)
    try:
        _fill_a_run(store)
    finally:
        store.close()
    found = {k: raw.ttl(k) for k in raw.scan_iter(match=f"{prefix}:*", count=1000)}
    kinds = {k.split(":")[1] for k in found}
    assert kinds == {"run", "claim", "runs", "host"}
    # run, results, events, report, one claim, the time index, two per-host indexes
    assert len(found) == 8, sorted(found)
    assert all(0 < ttl <= 3600 for ttl in found.values()), found
    # The colon host appears in keys only hex-encoded.
    assert not any("db:1" in k for k in found)


def test_time_index_drops_runs_older_than_retention(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    store = RedisRunStore.from_url(redis_server.url, prefix=prefix, retention=60)
    try:
        hosts = make_hosts("web01")
        store.create_run(make_run("old", hosts, created_at="2020-01-01T00:00:00+00:00"), hosts)
        store.create_run(make_run("new", hosts), hosts)
        assert raw.zrange(f"{prefix}:runs", 0, -1) == ["new"]
        assert [r.run_id for r in store.list_runs()] == ["new"]
    finally:
        store.close()


def test_event_stream_is_bounded_above_the_host_count(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    store = RedisRunStore.from_url(redis_server.url, prefix=prefix)
    try:
        hosts = make_hosts("web01")
        store.create_run(make_run("r1", hosts), hosts)
        events_max = int(raw.hget(f"{prefix}:run:r1", "events_max") or 0)
        assert events_max >= 10 * len(hosts)
        pipe = raw.pipeline(transaction=False)
        for _ in range(events_max + 500):
            pipe.xadd(f"{prefix}:run:r1:events", {"type": "x"})
        pipe.execute()
        store.add_event("r1", {"type": "finished"})
        # Approximate trimming: near the bound, never far past it.
        assert raw.xlen(f"{prefix}:run:r1:events") < events_max + 200
    finally:
        store.close()


def test_run_ids_cannot_spell_other_keys(redis_server: RedisServer, prefix: str) -> None:
    store = RedisRunStore.from_url(redis_server.url, prefix=prefix)
    try:
        hosts = make_hosts("web01")
        store.create_run(make_run("r1", hosts), hosts)
        with pytest.raises(RunNotFoundError):
            store.get_run("r1:results")
        with pytest.raises(FleetError):
            store.create_run(make_run("a:b", hosts), hosts)
        assert not store.is_live("r1:events")
    finally:
        store.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_ping_closed_port_fails_fast_with_redacted_url() -> None:
    port = _closed_port()
    store = RedisRunStore.from_url(f"redis://:secret@127.0.0.1:{port}/0")
    try:
        t0 = time.monotonic()
        with pytest.raises(BackendError) as info:
            store.ping()
        assert time.monotonic() - t0 < 3.0
    finally:
        store.close()
    message = str(info.value)
    assert "secret" not in message
    assert f"redis://:***@127.0.0.1:{port}/0" in message
    assert "unreachable" in message


def test_ping_silent_server_fails_within_seconds() -> None:
    # Accepts the connection and never answers: a hung server, not a refused port.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = RedisRunStore.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            t0 = time.monotonic()
            with pytest.raises(BackendError, match="unreachable"):
                store.ping()
            assert time.monotonic() - t0 < 3.5
        finally:
            store.close()


def test_other_calls_raise_backend_error_not_redis_errors() -> None:
    store = RedisRunStore.from_url(f"redis://:pw@127.0.0.1:{_closed_port()}/0")
    try:
        with pytest.raises(BackendError):
            store.get_run("r1")
        with pytest.raises(BackendError):
            store.claim_host("r1", "web01", "w1")
    finally:
        store.close()


def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(FleetError, match="run store URL"):
        RedisRunStore.from_url("http://:secret@example.com/")


def test_restart_between_calls_is_ridden_out(fresh_redis: RedisServer) -> None:
    server = fresh_redis
    store = RedisRunStore.from_url(server.url, prefix="restart")
    try:
        hosts = make_hosts("web01")
        store.create_run(make_run("r1", hosts), hosts)
        server.kill()
        # Back within the retry budget (about 2.5 s): the call waits and succeeds.
        timer = threading.Timer(0.5, server.start)
        timer.start()
        try:
            t0 = time.monotonic()
            assert store.claim_host("r1", "web01", "w1")
            assert time.monotonic() - t0 >= 0.4
        finally:
            timer.join()
        # The data went with the server (no persistence): the store says so plainly.
        with pytest.raises(RunNotFoundError):
            store.get_run("r1")
        store.create_run(make_run("r2", hosts), hosts)
        assert store.get_run("r2").run_id == "r2"
    finally:
        store.close()


def test_restart_while_down_too_long_is_a_backend_error(fresh_redis: RedisServer) -> None:
    server = fresh_redis
    store = RedisRunStore.from_url(server.url, prefix="down")
    try:
        store.ping()
        server.kill()
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="unreachable"):
            store.get_run("r1")
        assert time.monotonic() - t0 < 10
        server.start()
        store.ping()
        with pytest.raises(RunNotFoundError):
            store.get_run("r1")
    finally:
        store.close()


def test_check_server_warns_when_eviction_is_on(fresh_redis: RedisServer) -> None:
    raw = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    store = RedisRunStore.from_url(fresh_redis.url)
    try:
        assert store.check_server() is None
        raw.config_set("maxmemory-policy", "allkeys-lru")
        try:
            warning = store.check_server()
        finally:
            raw.config_set("maxmemory-policy", "noeviction")
        assert warning is not None
        assert "allkeys-lru" in warning and "noeviction" in warning
    finally:
        store.close()
        raw.close()


def test_a_start_resent_after_its_reply_was_lost_finds_its_own_claim(make_store: MakeStore) -> None:
    # redis-py resends a call whose reply it lost (the store's retry policy), with the
    # same arguments. Its claim is then already there: the call must know it as its own,
    # or the host is neither run by it nor by anyone else.
    from fleet.store.redis_start import RedisStart

    store = make_store()
    assert isinstance(store, RedisStart)
    hosts = make_hosts("web01", COLON_HOST)
    store.create_run(make_run("r1", hosts), hosts)
    now = time.time()
    assert store._start("r1", COLON_HOST, "w1", now, "call-1") == "started"
    assert store._start("r1", COLON_HOST, "w1", now, "call-1") == "started"  # resent
    assert store._start("r1", COLON_HOST, "w1", now, "call-2") == "taken"  # another delivery
    assert store.start_host("r1", COLON_HOST, "w2", now) == "taken"
    assert store.claim_holder("r1", COLON_HOST) == "w1"
    started = [e for _, e in store.events("r1") if e.get("type") == "started"]
    assert started == [{"type": "started", "host": COLON_HOST, "worker": "w1"}]  # once
    # A plain claim (the run's end, a batch, a beat slot) too.
    key = store._key("claim", "r1", "web01")
    assert store._claim(key, FINALIZER, 60, nonce="call-3")
    assert store._claim(key, FINALIZER, 60, nonce="call-3")  # resent: still its own
    assert not store._claim(key, FINALIZER, 60, nonce="call-4")
    assert not store.claim_host("r1", "web01", "w2")
    assert store.claim_holder("r1", "web01") == FINALIZER
    assert store.start_host("r1", "web01", "w1", now) == "closed"


def test_worker_liveness_lapses_and_a_restart_is_another_process(
    make_store: MakeStore, raw: redis.Redis, prefix: str
) -> None:
    """`beat_alive` holds for its TTL on Redis's clock; `dead_workers` lists the lapsed
    processes to a judge whose own beat is fresh, never the judge, then forgets them;
    the same name in another process is another holder."""
    import fleet.store.redis_liveness as liveness

    store = make_store()
    assert abs(store.beat_alive("judge@j", 60) - time.time()) < 1.0  # the store's clock
    assert store.dead_workers(60, "judge@j", 30) == {}
    store.beat_alive("w1@a", 0.3)
    store.beat_alive("w2@b", 60)
    assert store.dead_workers(60, "judge@j", 30) == {}
    assert 0 < raw.ttl(f"{prefix}:alive") <= liveness.KEY_TTL_S  # every key has a TTL
    time.sleep(0.4)
    (died,) = store.dead_workers(60, "judge@j", 30).items()
    assert died[0] == ("w1@a", PROCESS_ID)
    assert abs(died[1] - time.time()) < 1.0  # when (the store's clock): 0.3 s after the beat
    # A judge whose own beat is not fresh (or absent) sees nobody dead.
    assert store.dead_workers(60, "judge@j", 90) == {}
    assert store.dead_workers(60, "nobody@x", 1) == {}
    # The judge never lists itself, even when its own time ran out.
    assert ("w1@a", PROCESS_ID) not in store.dead_workers(60, "w1@a", -60)
    store.forget_alive("w2@b")  # a warm shutdown: not dead, gone
    assert list(store.dead_workers(60, "judge@j", 30)) == [("w1@a", PROCESS_ID)]
    time.sleep(0.2)
    assert store.dead_workers(0.1, "judge@j", 30) == {}  # lapsed longer ago: dropped
    # A claim names its process: a worker restarted under the same name beats as
    # another one, and the host its predecessor held stays the predecessor's.
    hosts = make_hosts("web01")
    store.create_run(make_run("r1", hosts), hosts)
    assert store.start_host("r1", "web01", "w1@a", time.time()) == "started"
    assert store.claim_holders("r1", ["web01"]) == {"web01": ("w1@a", PROCESS_ID)}
    raw.zadd(f"{prefix}:alive", {f"w1@a\x1f{'0' * 16}": time.time() - 1})
    assert ("w1@a", "0" * 16) in store.dead_workers(60, "judge@j", 30)
