"""The run store on Redis: the only module of fleet that imports redis.

Key layout and Lua scripts live in `fleet.store.keys`. Every redis exception is
caught here and re-raised as `BackendError` naming the store's URL, redacted.

Retries: the client retries connection errors with a short backoff, so a Redis
restart of a second or two is ridden out. A retried write may have landed the
first time; every write here is either idempotent (HSETNX, compare-and-set), or knows
its own first attempt (a claim holds its call's nonce, `fleet.store.redis_start`), or
knows its own first attempt by what it wrote (`save_result`), or errs on the safe side
(a retried event may appear twice).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from fleet.errors import BackendError, ConfigError, RunNotFoundError
from fleet.inventory.hosts import Host
from fleet.results import HostResult, RunRecord, RunReport
from fleet.settings import DEFAULTS, redact_url
from fleet.store import codec, keys
from fleet.store.protocol import (
    RUNNING,
    BeatState,
    beat_state_from,
    listed_run,
    not_found_message,
    read_run,
    result_event,
    stored_result,
)
from fleet.store.redis_affinity import RedisAffinity
from fleet.store.redis_audit import RedisAudit
from fleet.store.redis_blobs import RedisBlobs
from fleet.store.redis_env import RedisEnv
from fleet.store.redis_liveness import RedisLiveness
from fleet.store.redis_slots import RedisSlots
from fleet.store.redis_start import NONCE_SEP, RedisStart
from fleet.textsafe import exception_line

CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
HEALTH_CHECK_INTERVAL = 15
RETRIES = 5  # with the backoff below: about 2.5 s of retrying, enough for a restart
PING_TIMEOUT = 2.0
LIST_BATCH = 100


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _describe(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


class RedisRunStore(
    RedisStart, RedisSlots, RedisAffinity, RedisLiveness, RedisAudit, RedisEnv, RedisBlobs
):
    """Run records, claims, results, progress events and reports in Redis.

    `client` may be any `redis.Redis` (decoded responses or not). `from_url`
    builds one with fleet's timeouts and retry policy.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULTS.prefix,
        retention: int = DEFAULTS.retention,
        url_for_messages: str | None = None,
        ping_client: redis.Redis | None = None,
        audit_retention: int = DEFAULTS.audit_retention,
    ) -> None:
        self._client = client
        self._ping_client = ping_client or client
        self._prefix = prefix
        self._retention = int(retention)
        self._audit_retention = int(audit_retention)
        self._url = redact_url(url_for_messages) if url_for_messages else _describe(client)
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        # A blocking XREAD longer than the socket timeout would read as a dead server.
        self._max_block_ms = max(100, int((timeout - 1.0) * 1000)) if timeout else None
        self._set_state = client.register_script(keys.SET_STATE_LUA)
        self._add_event = client.register_script(keys.ADD_EVENT_LUA)
        self._save_result = client.register_script(keys.SAVE_RESULT_LUA)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULTS.prefix,
        retention: int = DEFAULTS.retention,
        audit_retention: int = DEFAULTS.audit_retention,
    ) -> RedisRunStore:
        """A store on the Redis at `url`. Raises `ConfigError` if the URL is not a Redis URL.

        Connecting is lazy: call `ping()` to find out early whether the server answers.
        """
        common: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT}
        try:
            client = redis.Redis.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT,
                health_check_interval=HEALTH_CHECK_INTERVAL,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), RETRIES),
                **common,
            )
            # ping fails fast: no retries, a short read timeout.
            ping_client = redis.Redis.from_url(
                url, socket_timeout=PING_TIMEOUT, retry=Retry(NoBackoff(), 0), **common
            )
        except ValueError as exc:
            raise ConfigError(f"run store URL {redact_url(url)}: {exc}") from exc
        return cls(
            client,
            prefix=prefix,
            retention=retention,
            url_for_messages=url,
            ping_client=ping_client,
            audit_retention=audit_retention,
        )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendError(
                f"run store at {self._url} unreachable: {exception_line(exc)}"
            ) from exc
        except redis.RedisError as exc:
            raise BackendError(f"run store at {self._url} failed: {exception_line(exc)}") from exc

    def _key(self, kind: keys.KeyKind, run_id: str = "", host: str = "") -> str:
        if run_id and not keys.is_valid_run_id(run_id):
            # Such an id was never created, and it could spell another run's key.
            raise RunNotFoundError(not_found_message(run_id, self._retention))
        return keys.key(self._prefix, kind, run_id, host)

    def ping(self) -> None:
        with self._guard():
            self._ping_client.ping()

    def check_server(self) -> str | None:
        """A warning when the server may evict keys (which breaks Celery and loses runs)."""
        with self._guard():
            try:
                config = self._client.config_get("maxmemory-policy")
            except redis.ResponseError:
                return None  # CONFIG disabled (managed Redis): nothing to check with
        policy = _text(next(iter(config.values()), "")) if config else ""
        if policy and policy != "noeviction":
            return (
                f"redis at {self._url} has maxmemory-policy {policy!r}: it may evict queued "
                "tasks, chord state and run records; set it to 'noeviction'"
            )
        return None

    def create_run(self, run: RunRecord, hosts: Sequence[Host]) -> None:
        if not keys.is_valid_run_id(run.run_id):
            raise ConfigError(f"invalid run id {run.run_id!r}")
        ttl = self._retention
        created = keys.epoch(run.created_at)
        cutoff = time.time() - ttl
        run_key = self._key("run", run.run_id)
        with self._guard():
            pipe = self._client.pipeline(transaction=True)
            # A run id created again starts afresh: no results, events or claims of before.
            stale = [self._key(k, run.run_id) for k in ("results", "events", "report")]
            stale += [self._key("claim", run.run_id, name) for name in run.hosts]
            pipe.delete(run_key, *stale)
            pipe.hset(
                run_key,
                mapping={
                    "record": keys.dumps(run.to_dict()),
                    "state": run.state,
                    "finished_at": run.finished_at or "",
                    "deadline": repr(run.deadline),
                    "hosts": keys.hosts_json(hosts),
                    "events_max": keys.events_bound(len(run.hosts)),
                },
            )
            pipe.expire(run_key, ttl)
            indexes = [self._key("runs")]
            indexes += [self._key("host_runs", host=name) for name in dict.fromkeys(run.hosts)]
            for index in indexes:
                pipe.zadd(index, {run.run_id: created})
                pipe.zremrangebyscore(index, "-inf", f"({cutoff}")
                pipe.expire(index, ttl)
            pipe.execute()

    def get_run(self, run_id: str) -> RunRecord:
        with self._guard():
            raw = self._client.hmget(self._key("run", run_id), ["record", "state", "finished_at"])
        run = read_run(run_id, functools.partial(self._decode_run, raw))
        if run is None:
            raise RunNotFoundError(not_found_message(run_id, self._retention))
        return run

    @staticmethod
    def _decode_run(raw: Sequence[Any]) -> RunRecord | None:
        record, state, finished_at = raw
        if record is None:
            return None
        data = json.loads(_text(record))
        data["state"] = _text(state)
        data["finished_at"] = _text(finished_at) if finished_at else None
        return RunRecord.from_dict(data)

    def run_hosts(self, run_id: str) -> tuple[Host, ...]:
        with self._guard():
            raw = self._client.hget(self._key("run", run_id), "hosts")
        return keys.hosts_from_json(_text(raw)) if raw else ()

    def claim_holder(self, run_id: str, host: str) -> str | None:
        with self._guard():
            holder = self._client.get(self._key("claim", run_id, host))
        # A claim also holds its call's nonce (`fleet.store.redis_start`).
        return None if holder is None else _text(holder).split(NONCE_SEP, 1)[0]

    def is_live(self, run_id: str, now: float | None = None) -> bool:
        if not keys.is_valid_run_id(run_id):
            return False
        with self._guard():
            state, deadline = self._client.hmget(self._key("run", run_id), ["state", "deadline"])
        if state is None or _text(state) != RUNNING or deadline is None:
            return False
        now = time.time() if now is None else now
        return now < float(_text(deadline))

    def set_state(
        self,
        run_id: str,
        state: str,
        *,
        expected: str = RUNNING,
        finished_at: str | None = None,
    ) -> bool:
        if not keys.is_valid_run_id(run_id):
            return False
        with self._guard():
            changed = self._set_state(
                keys=[self._key("run", run_id)], args=[expected, state, finished_at or ""]
            )
        return bool(changed)

    def save_result(self, run_id: str, result: HostResult) -> bool:
        fields = [x for pair in result_event(result).items() for x in pair]
        with self._guard():
            event_id = self._save_result(
                keys=[
                    self._key("run", run_id),
                    self._key("results", run_id),
                    self._key("events", run_id),
                ],
                args=[self._retention, result.host, codec.result_json(result), *fields],
            )
        return event_id is not None

    def results(self, run_id: str) -> dict[str, HostResult]:
        with self._guard():
            raw = self._client.hgetall(self._key("results", run_id))
        return {
            _text(h): stored_result(run_id, _text(h), functools.partial(codec.result_from_json, v))
            for h, v in raw.items()
        }

    def add_event(self, run_id: str, event: Mapping[str, str]) -> str:
        if not event:
            raise ValueError("an event needs at least one field")
        fields = [x for pair in event.items() for x in (str(pair[0]), str(pair[1]))]
        with self._guard():
            event_id = self._add_event(
                keys=[self._key("run", run_id), self._key("events", run_id)],
                args=[self._retention, *fields],
            )
        return _text(event_id)

    def events(
        self, run_id: str, after: str = "0", block_ms: int = 0, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        # XREAD's BLOCK 0 means "forever"; here 0 means "do not wait".
        block = None
        if block_ms > 0:
            cap = self._max_block_ms
            block = block_ms if cap is None else min(block_ms, cap)
        with self._guard():
            answer = self._client.xread(
                {self._key("events", run_id): after}, count=count, block=block
            )
        if not answer:
            return []
        reply = cast(Any, answer)  # redis-py's stubs do not describe XREAD's shape
        # RESP2 answers a list of [stream, entries]; RESP3 a dict of stream -> entries.
        streams = reply.values() if isinstance(reply, dict) else [s[1] for s in reply]
        out: list[tuple[str, dict[str, str]]] = []
        for entries in streams:
            for entry_id, data in entries:
                out.append((_text(entry_id), {_text(k): _text(v) for k, v in data.items()}))
        return out

    def save_report(self, report: RunReport) -> None:
        with self._guard():
            self._client.set(
                self._key("report", report.run.run_id),
                codec.summary_json(report),
                ex=self._retention,
            )

    def load_report(self, run_id: str) -> RunReport | None:
        with self._guard():
            final = self._client.exists(self._key("report", run_id))
        if not final:
            return None
        return RunReport.assemble(self.get_run(run_id), list(self.results(run_id).values()))

    def list_runs(self, limit: int = 20, host: str | None = None) -> list[RunRecord]:
        index = self._key("runs") if host is None else self._key("host_runs", host=host)
        cutoff = time.time() - self._retention
        runs: list[RunRecord] = []
        start = 0
        with self._guard():
            while len(runs) < limit:
                ids = self._client.zrevrangebyscore(
                    index, "+inf", cutoff, start=start, num=LIST_BATCH
                )
                if not ids:
                    break
                start += len(ids)
                pipe = self._client.pipeline(transaction=False)
                for run_id in ids:
                    pipe.hmget(self._key("run", _text(run_id)), ["record", "state", "finished_at"])
                for run_id, raw in zip(ids, pipe.execute(), strict=True):
                    run = listed_run(_text(run_id), functools.partial(self._decode_run, raw))
                    if run is not None:  # expired since it was indexed
                        runs.append(run)
        return runs[:limit]

    def claim_slot(self, schedule: str, slot: int, ttl_s: int) -> bool:
        key = keys.key(self._prefix, "beat_slot", str(int(slot)), schedule)
        return self._claim(key, "beat", max(1, int(ttl_s)))

    def record_firing(self, schedule: str, slot: int, run_id: str) -> None:
        with self._guard():
            key = keys.key(self._prefix, "beat", host=schedule)
            pipe = self._client.pipeline()
            pipe.hset(key, mapping={"last_slot": int(slot), "last_run_id": run_id})
            pipe.expire(key, self._retention)
            pipe.execute()

    def count_skip(self, schedule: str) -> int:
        with self._guard():
            key = keys.key(self._prefix, "beat", host=schedule)
            pipe = self._client.pipeline()
            pipe.hincrby(key, "skipped", 1)
            pipe.expire(key, self._retention)
            return int(pipe.execute()[0])

    def beat_state(self, schedule: str) -> BeatState:
        with self._guard():
            raw = self._client.hmget(
                keys.key(self._prefix, "beat", host=schedule),
                ["last_slot", "last_run_id", "skipped"],
            )
        return beat_state_from(*(None if v is None else _text(v) for v in raw))

    def close(self) -> None:
        self._client.close()
        if self._ping_client is not self._client:
            self._ping_client.close()
