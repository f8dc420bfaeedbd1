"""Worker registrations for host affinity in SQLite: none (a mixin of `SqliteRunStore`).

The SQLite store serves the embedded mode, whose one in-process worker consumes one
queue (`fleet.canvas.queue_for`): there is no other worker to route a host to, so it
keeps no registrations and every host goes to its plain queue (`fleet.affinity`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleet.store.parts import SqlitePart


class SqliteAffinity(SqlitePart):
    """`register_worker`, `retire_worker`, `live_workers`, `expired_workers` of the
    `RunStore` protocol: nothing registered, so no affinity."""

    def register_worker(self, personals: Mapping[str, str], ttl_s: float) -> None:
        return None

    def retire_worker(self, personals: Mapping[str, str]) -> None:
        return None

    def live_workers(self, queues: Sequence[str], min_left_s: float) -> dict[str, list[str]]:
        return {}

    def expired_workers(self, queues: Sequence[str], drop_after_s: float) -> dict[str, list[str]]:
        return {}
