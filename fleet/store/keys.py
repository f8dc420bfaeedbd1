"""Redis key names, value encodings and Lua scripts of the run store (no redis import).

Layout, every key under one prefix and every key with a TTL (the retention)::

    {prefix}:run:{id}                hash: record (JSON RunRecord), state, finished_at,
                                     deadline, hosts (JSON list of Host dicts, no free
                                     vars), events_max
    {prefix}:run:{id}:results        hash: host name -> JSON HostResult, compact
                                     (`fleet.store.codec`; first write wins)
    {prefix}:run:{id}:events         stream of progress events (approximate MAXLEN)
    {prefix}:run:{id}:report         string: JSON summary of the final report (counts);
                                     the report is the record and the results
    {prefix}:run:{id}:env            string: JSON of the run's --env values (TTL: the
                                     run's deadline; deleted when the run finishes)
    {prefix}:claim:{id}:{hexhost}    string: who claimed the host, \x1f, the call's nonce
    {prefix}:runs                    sorted set: run id scored by creation time
    {prefix}:host:{hexhost}:runs     sorted set: the runs that targeted one host
    {prefix}:beat:{hexname}          hash: a schedule's last_slot, last_run_id, skipped
    {prefix}:beat:{hexname}:{slot}   string: the claim of one firing slot (first beat wins)
    {prefix}:slots:{hexscope}        sorted set: timed slots, holder -> until when (server
                                     time), expiring with its last holder; scopes
                                     ``fanout:{id}`` (a run's --fanout, fleet.rollout) and
                                     ``handshake:{addr:port}`` (fleet.ssh.handshakes)
    {prefix}:workers:{hexqueue}      sorted set: the personal queues of the workers
                                     serving one queue, until when (server time;
                                     fleet.affinity, fleet.store.redis_affinity)
    {prefix}:audit                   stream: the audit log (fleet.audit), one JSON entry per
                                     id, trimmed by age (MINID); its own retention

Host names may hold ``:``, ``/``, ``[`` and the like, so they appear in key names
only hex-encoded; run ids are checked against `RUN_ID_RE` so that no id can
spell another run's key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from fleet.errors import CorruptRecordError
from fleet.inventory.hosts import Host

KeyKind = Literal[
    "run",
    "results",
    "events",
    "report",
    "claim",
    "runs",
    "host_runs",
    "beat",
    "beat_slot",
    "audit",
    "env",
    "slots",
]

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

#: Progress events kept per run at least; a run with many hosts keeps more.
MIN_EVENTS = 10_000
EVENTS_PER_HOST = 10


def key(prefix: str, kind: KeyKind, run_id: str = "", host: str = "") -> str:
    """The one place a key name is spelled. For ``beat`` keys `host` is the schedule's
    name and `run_id` the slot."""
    if kind == "beat":
        return f"{prefix}:beat:{host_token(host)}"
    if kind == "beat_slot":
        return f"{prefix}:beat:{host_token(host)}:{run_id}"
    if kind == "runs":
        return f"{prefix}:runs"
    if kind == "audit":
        return f"{prefix}:audit"
    if kind == "slots":
        return f"{prefix}:slots:{host_token(host)}"
    if kind == "host_runs":
        return f"{prefix}:host:{host_token(host)}:runs"
    if kind == "claim":
        return f"{prefix}:claim:{run_id}:{host_token(host)}"
    if kind == "run":
        return f"{prefix}:run:{run_id}"
    return f"{prefix}:run:{run_id}:{kind}"


def host_token(host: str) -> str:
    """A host name made safe for a key: hex of its UTF-8 bytes (reversible, never ambiguous)."""
    return host.encode("utf-8", "surrogatepass").hex()


def is_valid_run_id(run_id: str) -> bool:
    return RUN_ID_RE.fullmatch(run_id) is not None


def events_bound(host_count: int) -> int:
    """The approximate MAXLEN of a run's event stream: well above its host count."""
    return max(MIN_EVENTS, EVENTS_PER_HOST * host_count)


def epoch(iso: str) -> float:
    """Epoch seconds of an ISO timestamp (the score in the time indexes)."""
    return datetime.fromisoformat(iso).timestamp()


def dumps(value: Any) -> str:
    # default=str: user host vars from YAML may hold dates; they come back as strings.
    return json.dumps(value, separators=(",", ":"), default=str)


def hosts_json(hosts: Sequence[Host]) -> str:
    """The run's hosts as stored: what a task needs of each, without free `vars` (an
    inventory's free variables, repeated on every host, could make a record huge)."""
    return dumps([{k: v for k, v in h.to_dict().items() if k != "vars"} for h in hosts])


def hosts_from_json(text: str) -> tuple[Host, ...]:
    """Raises `CorruptRecordError` (a `ValueError`) when the stored list is malformed."""
    try:
        return tuple(Host.from_dict(d) for d in json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptRecordError(f"run hosts: unreadable ({type(exc).__name__})") from None


# KEYS[1] run hash. ARGV: expected state, new state, finished_at ("" to leave it).
SET_STATE_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[3])
end
return 1
"""

# KEYS: run hash, events stream. ARGV: retention, then field/value pairs.
# The bound comes from the run (its host count), so callers need not know it.
ADD_EVENT_LUA = f"""
local bound = tonumber(redis.call('HGET', KEYS[1], 'events_max') or '') or {MIN_EVENTS}
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', bound, '*', unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[2], ARGV[1])
return id
"""

# KEYS: run hash, results hash, events stream. ARGV: retention, host, result JSON,
# then the event's field/value pairs. Storing and announcing are one step, so a
# follower never sees a result event without its result, nor a result twice; a run
# whose record is gone gets nothing (its result keys would live on alone). The same
# result already there is this call's first attempt, resent after its reply was lost:
# stored, and announced then.
SAVE_RESULT_LUA = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false  -- the run is gone (expired, flushed): do not recreate its keys
end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then
  if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[3] then
    return 'again'
  end
  return false
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
local bound = tonumber(redis.call('HGET', KEYS[1], 'events_max') or '') or {MIN_EVENTS}
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', bound, '*', unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[3], ARGV[1])
return id
"""
