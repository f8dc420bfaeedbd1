"""A rolling run's `--fanout` slots in Redis (a mixin of `RedisRunStore`).

One sorted set per run, ``{prefix}:run:{id}:fanout``: member a host name, score the
server time (seconds) until which its slot is held. A slot whose holder died frees
itself when that time passes, so a killed worker cannot shrink the run's fan-out for
good; the time is Redis's own (``TIME``), not a worker's clock.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from fleet.store import keys

# KEYS[1] the run's fanout set. ARGV: host, limit, hold seconds, key TTL.
TAKE_SLOT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 1  -- a redelivery of a task that holds its slot already
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class RedisFanout:
    """`take_fanout_slot` / `release_fanout_slot` of the `RunStore` protocol."""

    _client: Any
    _retention: int
    _take_slot: Any = None

    def _guard(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # RedisRunStore's

    def _key(self, kind: keys.KeyKind, run_id: str = "", host: str = "") -> str:
        raise NotImplementedError

    def take_fanout_slot(self, run_id: str, host: str, limit: int, hold_s: float) -> bool:
        if self._take_slot is None:
            self._take_slot = self._client.register_script(TAKE_SLOT_LUA)
        key = self._key("fanout", run_id)
        with self._guard():
            taken = self._take_slot(keys=[key], args=[host, limit, hold_s, self._retention])
        return bool(int(taken))

    def release_fanout_slot(self, run_id: str, host: str) -> None:
        with self._guard():
            self._client.zrem(self._key("fanout", run_id), host)
