"""Timed slots in Redis (a mixin of `RedisRunStore`): a run's ``--fanout``
(`fleet.rollout`) and the SSH handshakes in progress per sshd (`fleet.ssh.handshakes`).

One sorted set per scope, ``{prefix}:slots:{hexscope}``: member a holder, score the
server time (seconds) until which it holds its slot. A holder that died frees its slot
when that time passes, so a killed worker cannot keep a slot for good; the time is
Redis's own (``TIME``), not a worker's clock. The key expires with its last holder.
"""

from __future__ import annotations

from typing import Any

from fleet.store.parts import RedisPart
from fleet.store.protocol import Slot

# KEYS[1] the scope's set. ARGV: holder, limit, hold seconds.
TAKE_SLOT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 2  -- its holder already (another delivery of the same task message)
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2])) + 1)
return 1
"""

# KEYS[1] the scope's set. ARGV: holder, seconds until the slot frees (0: now).
RELEASE_SLOT_LUA = """
if tonumber(ARGV[2]) <= 0 then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1]) == 0 then
  return 0
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2])) + 1)
return 1
"""


class RedisSlots(RedisPart):
    """`take_slot` / `release_slot` of the `RunStore` protocol."""

    _take_slot: Any = None
    _release_slot: Any = None

    def take_slot(self, scope: str, holder: str, limit: int, hold_s: float) -> Slot:
        if self._take_slot is None:
            self._take_slot = self._client.register_script(TAKE_SLOT_LUA)
        key = self._key("slots", host=scope)
        with self._guard():
            taken = self._take_slot(keys=[key], args=[holder, limit, hold_s])
        return Slot(int(taken))

    def release_slot(self, scope: str, holder: str, linger_s: float = 0.0) -> None:
        if self._release_slot is None:
            self._release_slot = self._client.register_script(RELEASE_SLOT_LUA)
        key = self._key("slots", host=scope)
        with self._guard():
            self._release_slot(keys=[key], args=[holder, linger_s])
