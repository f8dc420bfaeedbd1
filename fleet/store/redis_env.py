"""A run's `--env` values in Redis (a mixin of `RedisRunStore`), out of every message.

One string per run, ``{prefix}:run:{id}:env``: the JSON object NAME -> value the
submitter staged (`stage_env`), read by the workers by run id (`staged_env`), deleted
when the run finishes (`drop_env`, from `fleet.lifecycle.finalize_run`) and expiring by
itself with the run's deadline, so no value outlives the run that needed it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from fleet.store import keys
from fleet.store.parts import RedisPart


def decode_env(raw: Any) -> dict[str, str] | None:
    """Staged values from their stored JSON, or None when absent or not a str -> str object."""
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return None
    return data


def ttl_seconds(ttl_s: float, retention: int) -> int:
    """Whole seconds, at least 1 and at most the store's retention."""
    return max(1, min(int(retention), math.ceil(ttl_s)))


class RedisEnv(RedisPart):
    """`stage_env` / `staged_env` / `drop_env` of the `RunStore` protocol."""

    _retention: int

    def stage_env(self, run_id: str, values: Mapping[str, str], ttl_s: float) -> None:
        key = self._key("env", run_id)
        with self._guard():
            self._client.set(key, keys.dumps(dict(values)), ex=ttl_seconds(ttl_s, self._retention))

    def staged_env(self, run_id: str) -> dict[str, str] | None:
        key = self._key("env", run_id)
        with self._guard():
            raw = self._client.get(key)
        return decode_env(raw)

    def drop_env(self, run_id: str) -> None:
        key = self._key("env", run_id)
        with self._guard():
            self._client.delete(key)
