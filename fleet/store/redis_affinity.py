"""Worker registrations for host affinity in Redis (a mixin of `RedisRunStore`;
`fleet.affinity`).

One sorted set per plain queue, ``{prefix}:workers:{hexqueue}``: member a worker's
personal queue, score the server time (seconds) until which its registration holds.
Times are Redis's own (``TIME``), never a worker's or the submitter's clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleet.store import keys
from fleet.store.parts import RedisPart

#: A registration key outlives its last heartbeat by this much (every key has a TTL).
KEY_TTL_S = 3600

# KEYS: the queues' sets. ARGV: ttl seconds, key TTL, then the member for each key.
REGISTER_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, now + tonumber(ARGV[1]), ARGV[i + 2])
  redis.call('EXPIRE', k, ARGV[2])
end
return 1
"""

# KEYS: the queues' sets. ARGV: mode ('live' or 'expired'), seconds. live: members
# whose registration holds more than ARGV[2] seconds still; expired: members past their
# time (those expired more than ARGV[2] seconds ago are dropped first).
SELECT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i, k in ipairs(KEYS) do
  if ARGV[1] == 'live' then
    out[i] = redis.call('ZRANGEBYSCORE', k, '(' .. (now + tonumber(ARGV[2])), '+inf')
  else
    redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. (now - tonumber(ARGV[2])))
    out[i] = redis.call('ZRANGEBYSCORE', k, '-inf', '(' .. now)
  end
end
return out
"""


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisAffinity(RedisPart):
    """`register_worker`, `retire_worker`, `live_workers`, `expired_workers` of the
    `RunStore` protocol."""

    _prefix: str
    _register: Any = None
    _select: Any = None

    def _workers_key(self, queue: str) -> str:
        return f"{self._prefix}:workers:{keys.host_token(queue)}"

    def register_worker(self, personals: Mapping[str, str], ttl_s: float) -> None:
        if not personals:
            return
        if self._register is None:
            self._register = self._client.register_script(REGISTER_LUA)
        with self._guard():
            self._register(
                keys=[self._workers_key(q) for q in personals],
                args=[ttl_s, KEY_TTL_S, *personals.values()],
            )

    def retire_worker(self, personals: Mapping[str, str]) -> None:
        # Registered until now: expired at once, and reclaimed like a lapsed heartbeat.
        self.register_worker(personals, 0.0)

    def live_workers(self, queues: Sequence[str], min_left_s: float) -> dict[str, list[str]]:
        return self._select_workers(queues, "live", min_left_s)

    def expired_workers(self, queues: Sequence[str], drop_after_s: float) -> dict[str, list[str]]:
        return self._select_workers(queues, "expired", drop_after_s)

    def _select_workers(
        self, queues: Sequence[str], mode: str, seconds: float
    ) -> dict[str, list[str]]:
        if not queues:
            return {}
        if self._select is None:
            self._select = self._client.register_script(SELECT_LUA)
        with self._guard():
            answer = self._select(keys=[self._workers_key(q) for q in queues], args=[mode, seconds])
        return {q: [_text(m) for m in members] for q, members in zip(queues, answer, strict=True)}
