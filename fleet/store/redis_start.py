"""Claims, and a host's start in one Redis round trip (a mixin of `RedisRunStore`): the
claim, the run's liveness and the ``started`` progress event, which
`fleet.lifecycle.run_host_job` used to ask in three. Same semantics as the three calls in
that order (the claim first: whoever holds it alone decides the host's fate).

A claim's value is the claimer's name (a worker's, `FINALIZER`, ...) and a nonce per
call (for a host's start: the worker process's `PROCESS_ID`, a dot, the OS pid of the
process that took it (a prefork pool process has its parent's `PROCESS_ID`), a dot, then
the nonce):
when redis-py resends a call whose reply it lost (the store's retry policy, with the
same arguments), the claim it finds is its own, and it goes on as the first attempt
did, instead of reading "someone else's" and leaving a host (or a batch) that nobody
starts or reports.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from fleet.store import keys
from fleet.store.parts import RedisPart
from fleet.store.protocol import FINALIZER, PROCESS_ID

#: Between the worker's name and the call's nonce in a claim's value (never in a name).
NONCE_SEP = "\x1f"

# KEYS: the claim's key. ARGV: claimer, seconds to keep it, this call's nonce.
# 1: claimed by this call (or by its first attempt).
CLAIM_LUA = """
local mine = ARGV[1] .. '\\31' .. ARGV[3]
if redis.call('SET', KEYS[1], mine, 'NX', 'EX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == mine then
  return 1
end
return 0
"""

# KEYS: claim key, run hash, events stream. ARGV: worker, retention, now (epoch s), host,
# the finalizer's claim name, this call's nonce.
START_HOST_LUA = f"""
local mine = ARGV[1] .. '\\31' .. ARGV[6]
local again = false
if not redis.call('SET', KEYS[1], mine, 'NX', 'EX', ARGV[2]) then
  local holder = redis.call('GET', KEYS[1])
  if string.match(holder, '^[^\\31]*') == ARGV[5] then
    return 'closed'
  end
  if holder ~= mine then
    return 'taken'
  end
  again = true
end
local run = redis.call('HMGET', KEYS[2], 'state', 'deadline', 'events_max')
if run[1] ~= 'running' or not run[2] or tonumber(ARGV[3]) >= tonumber(run[2]) then
  return 'not_live'
end
if not again then
  local bound = tonumber(run[3] or '') or {keys.MIN_EVENTS}
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', bound, '*',
             'type', 'started', 'host', ARGV[4], 'worker', ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return 'started'
"""


class RedisStart(RedisPart):
    """`claim_host` and `start_host` of the `RunStore` protocol."""

    _retention: int
    _start_host: Any = None
    _claim_script: Any = None

    def claim_host(self, run_id: str, host: str, worker: str) -> bool:
        return self._claim(self._key("claim", run_id, host), worker, self._retention)

    def _claim(self, key: str, who: str, ttl_s: int, nonce: str | None = None) -> bool:
        """SET NX of `key` for `ttl_s` seconds, safe to resend (see the module)."""
        if self._claim_script is None:
            self._claim_script = self._client.register_script(CLAIM_LUA)
        with self._guard():
            taken = self._claim_script(keys=[key], args=[who, ttl_s, nonce or uuid.uuid4().hex])
        return bool(int(taken))

    def start_host(self, run_id: str, host: str, worker: str, now: float) -> str:
        # The nonce names this process first (`claim_holders`), then its pid (`claim_pids`).
        nonce = f"{PROCESS_ID}.{os.getpid()}.{uuid.uuid4().hex}"
        return self._start(run_id, host, worker, now, nonce)

    def _start(self, run_id: str, host: str, worker: str, now: float, nonce: str) -> str:
        if self._start_host is None:
            self._start_host = self._client.register_script(START_HOST_LUA)
        names = [
            self._key("claim", run_id, host),
            self._key("run", run_id),
            self._key("events", run_id),
        ]
        with self._guard():
            outcome = self._start_host(
                keys=names, args=[worker, self._retention, now, host, FINALIZER, nonce]
            )
        return outcome.decode() if isinstance(outcome, bytes) else str(outcome)
