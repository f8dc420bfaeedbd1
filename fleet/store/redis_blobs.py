"""Files staged for a run in Redis (a mixin of `RedisRunStore`; `fleet.staging` uses it).

Layout, under the run's key ``{prefix}:run:{id}`` (`fleet.store.keys`)::

    {prefix}:run:{id}:blob:{hexname}   list: the file's chunks, in order (bytes)
    {prefix}:run:{id}:blobs            set: the blob keys of the run (for `blob_delete`)

Every key expires after the TTL its writer gives (the run's deadline plus a grace,
never more than the retention). The client must return bytes (no ``decode_responses``),
as `RedisRunStore.from_url` builds it.
"""

from __future__ import annotations

from fleet.store import keys
from fleet.store.parts import RedisPart


class RedisBlobs(RedisPart):
    """`blob_put_chunk` / `blob_chunk` / `blob_delete` of the `RunStore` protocol."""

    _retention: int

    def _blob_key(self, run_id: str, name: str) -> str:
        return f"{self._key('run', run_id)}:blob:{keys.host_token(name)}"

    def blob_put_chunk(self, run_id: str, name: str, index: int, data: bytes, ttl_s: int) -> None:
        key = self._blob_key(run_id, name)
        index_key = f"{self._key('run', run_id)}:blobs"
        ttl = max(1, min(int(ttl_s), self._retention))
        with self._guard():
            pipe = self._client.pipeline(transaction=True)
            if index == 0:
                pipe.delete(key)  # staged again (from the start): the old chunks go
            pipe.rpush(key, data)
            pipe.expire(key, ttl)
            pipe.sadd(index_key, key)
            pipe.expire(index_key, ttl)
            pipe.execute()

    def blob_chunk(self, run_id: str, name: str, index: int) -> bytes | None:
        with self._guard():
            value = self._client.lindex(self._blob_key(run_id, name), index)
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode("utf-8")

    def blob_delete(self, run_id: str) -> None:
        index_key = f"{self._key('run', run_id)}:blobs"
        prefix = f"{self._key('run', run_id)}:blob:"
        with self._guard():
            members = self._client.smembers(index_key)
            names = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
            # Only this run's blob keys, whatever the set was made to hold.
            doomed = [n for n in names if n.startswith(prefix)]
            self._client.delete(index_key, *doomed)
