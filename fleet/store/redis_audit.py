"""The audit log in Redis (a mixin of `RedisRunStore`): `append_audit`, `audit_entries`.

One stream, ``{prefix}:audit`` (`fleet.store.keys`), apart from every run's keys and
with its own retention (``FLEET_AUDIT_RETENTION``): each entry is one field, ``entry``,
holding the JSON of an `AuditEntry`. Each append trims the entries older than the
retention (``XADD ... MINID ~``, by Redis's own clock: the stream ids are its
milliseconds) and renews the key's TTL, so the stream never outlives its newest entry
by more than the retention. Entries are never changed or deleted otherwise.

Reading is newest first (``XREVRANGE``) and skips, with a warning naming its id, an
entry that is not a well-formed `AuditEntry` (`fleet.audit.decode_entries`).
"""

from __future__ import annotations

import time
from typing import Any

from fleet.audit import AuditEntry, decode_entries
from fleet.settings import DEFAULTS
from fleet.store import keys
from fleet.store.parts import RedisPart, text

# KEYS[1] the audit stream. ARGV: retention seconds, the entry's JSON.
APPEND_AUDIT_LUA = """
local t = redis.call('TIME')
local oldest = (tonumber(t[1]) - tonumber(ARGV[1])) * 1000
local id = redis.call('XADD', KEYS[1], 'MINID', '~', string.format('%d', oldest), '*',
                      'entry', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return id
"""

#: Entries asked of Redis at once while skipping unreadable ones.
READ_BATCH = 500


class RedisAudit(RedisPart):
    """`append_audit` / `audit_entries` of the `RunStore` protocol."""

    _audit_retention: int = DEFAULTS.audit_retention
    _append_audit: Any = None

    def append_audit(self, entry: AuditEntry) -> None:
        if self._append_audit is None:
            self._append_audit = self._client.register_script(APPEND_AUDIT_LUA)
        with self._guard():
            self._append_audit(
                keys=[self._key("audit")],
                args=[self._audit_retention, keys.dumps(entry.to_dict())],
            )

    def audit_entries(self, since: float | None = None, limit: int = 100) -> list[AuditEntry]:
        if limit <= 0:
            return []
        floor = max(since or 0.0, time.time() - self._audit_retention, 0.0)
        low = f"{int(floor * 1000)}-0"
        high = "+"
        out: list[AuditEntry] = []
        with self._guard():
            while len(out) < limit:
                batch = self._client.xrevrange(
                    self._key("audit"), max=high, min=low, count=min(READ_BATCH, limit - len(out))
                )
                if not batch:
                    break
                pairs = [(text(entry_id), text(_field(data, "entry"))) for entry_id, data in batch]
                out += decode_entries(pairs)
                high = f"({pairs[-1][0]}"  # exclusive: the next batch starts below it
        return out[:limit]


def _field(data: Any, name: str) -> Any:
    """Field `name` of a stream entry (keys are bytes or text, as the client decodes)."""
    if not isinstance(data, dict):
        return ""
    value = data.get(name, data.get(name.encode()))
    return "" if value is None else value
