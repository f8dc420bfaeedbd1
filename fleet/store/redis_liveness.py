"""Worker liveness in Redis (a mixin of `RedisRunStore`; `fleet.liveness`).

One sorted set, ``{prefix}:alive``: member a worker's node name, the byte 0x1f and its
process's `PROCESS_ID`; score the server time (seconds) until which it counts as
alive. Times are Redis's own (``TIME``), never a worker's clock: workers on several
machines compare one clock. Separate from the affinity registrations
(`fleet.store.redis_affinity`), which a worker expires as soon as its warm shutdown
begins, while its running hosts still run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleet.store.parts import RedisPart, text
from fleet.store.protocol import PROCESS_ID, Holder
from fleet.store.redis_start import NONCE_SEP

#: The set outlives its last beat by this much (every key has a TTL).
KEY_TTL_S = 86400

# KEYS: the set. ARGV: the worker, seconds alive from now, the key's TTL.
BEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return tostring(now)
"""

# KEYS: the set. ARGV: seconds, the judge's member, seconds the judge's own time must
# hold still. Members whose time passed, within the last ARGV[1] seconds (older ones
# are dropped); nothing unless the judge's own time holds ARGV[3] more (the caller
# leaves the judge out).
DEAD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local own = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]) or '')
if not own or own < now + tonumber(ARGV[3]) then
  return {}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'WITHSCORES')
"""


def _member(worker: str) -> str:
    """This process's member of the set, as worker `worker`."""
    return f"{worker}{NONCE_SEP}{PROCESS_ID}"


def _holder(value: str) -> Holder:
    """(worker, process) of a liveness member or a claim's value: a claim holds its
    call's nonce after the process (`fleet.store.redis_start`)."""
    worker, _, rest = value.partition(NONCE_SEP)
    return worker, rest.split(".", 1)[0]


def _pid(value: str) -> int | None:
    """The pid in a host start's claim (`fleet.store.redis_start`), or None (another
    claim, or one of a worker from before the pid was written)."""
    parts = value.partition(NONCE_SEP)[2].split(".")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


class RedisLiveness(RedisPart):
    """`beat_alive`, `forget_alive`, `dead_workers`, `claim_holders` and `claim_pids` of the
    `RunStore` protocol."""

    _prefix: str
    _beat_alive: Any = None
    _dead: Any = None

    def _alive_key(self) -> str:
        return f"{self._prefix}:alive"

    def beat_alive(self, worker: str, ttl_s: float) -> float:
        if self._beat_alive is None:
            self._beat_alive = self._client.register_script(BEAT_LUA)
        with self._guard():
            now = self._beat_alive(
                keys=[self._alive_key()], args=[_member(worker), ttl_s, KEY_TTL_S]
            )
        return float(text(now))

    def forget_alive(self, worker: str) -> None:
        with self._guard():
            self._client.zrem(self._alive_key(), _member(worker))

    def dead_workers(self, within_s: float, judge: str, min_left_s: float) -> dict[Holder, float]:
        if self._dead is None:
            self._dead = self._client.register_script(DEAD_LUA)
        args = [within_s, _member(judge), min_left_s]
        with self._guard():
            flat = self._dead(keys=[self._alive_key()], args=args)
        # Lua returns a score as a string (RESP2 and RESP3 alike).
        pairs = zip(flat[::2], flat[1::2], strict=True)
        dead = {_holder(text(member)): float(text(until)) for member, until in pairs}
        dead.pop((judge, PROCESS_ID), None)  # never itself: it is here, asking
        return dead

    def claim_holders(self, run_id: str, hosts: Sequence[str]) -> dict[str, Holder]:
        return {host: _holder(value) for host, value in self._claims(run_id, hosts).items()}

    def claim_pids(self, run_id: str, hosts: Sequence[str]) -> dict[str, int]:
        pids = {host: _pid(value) for host, value in self._claims(run_id, hosts).items()}
        return {host: pid for host, pid in pids.items() if pid is not None}

    def _claims(self, run_id: str, hosts: Sequence[str]) -> dict[str, str]:
        if not hosts:
            return {}
        with self._guard():
            values = self._client.mget([self._key("claim", run_id, h) for h in hosts])
        return {
            host: text(value)
            for host, value in zip(hosts, values, strict=True)
            if value is not None
        }
