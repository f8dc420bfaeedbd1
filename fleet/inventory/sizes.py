"""How many bytes of variable values the resolved hosts carry, and which key makes it.

An inventory of 1 MB can resolve to far more: a 1 MiB string in ``defaults`` is carried
by every host, 300 hosts make 300 MiB of host values, and those travel in task messages
and sit in the run store. `ResolvedSize` counts, while `fleet.inventory.loader` resolves,
the bytes every host carries (each value as JSON, once per host that carries it) by the
key path they come from, so a file over the limit is refused naming the key path that
weighs most.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from fleet.errors import InventoryError, InventoryProblem
from fleet.inventory.schema import join_path


class ResolvedSize:
    """Bytes of resolved host values, by the key path each value comes from."""

    def __init__(self) -> None:
        self._sizes: dict[int, int] = {}  # id(value) -> bytes, values live through loading
        self._bases: dict[Hashable, dict[str, tuple[str, int]]] = {}
        self._base_hosts: Counter[Hashable] = Counter()
        self._shadowed: Counter[tuple[Hashable, str]] = Counter()
        self._own: Counter[str] = Counter()

    def size(self, value: Any) -> int:
        """Bytes of `value` written as JSON (UTF-8), counted once per distinct object."""
        known = self._sizes.get(id(value))
        if known is None:
            text = json.dumps(value, ensure_ascii=False, default=str)
            known = self._sizes[id(value)] = len(text.encode("utf-8", "surrogatepass"))
        return known

    def base(self, chain: Hashable, layers: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """The values shared by hosts of one group `chain`: `layers` of (path, vars),
        lowest precedence first (a later layer replaces a key)."""
        if chain in self._bases:
            return
        origin: dict[str, tuple[str, int]] = {}
        for path, values in layers:
            for key, value in values.items():
                origin[key] = (join_path(path, key), self.size(value))
        self._bases[chain] = origin

    def host(self, chain: Hashable, own: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """One host of `chain` with its `own` listings' vars as (path, vars), in order."""
        self._base_hosts[chain] += 1
        base = self._bases[chain]
        origin: dict[str, tuple[str, Any]] = {}
        for path, values in own:
            for key, value in values.items():
                origin[key] = (join_path(path, key), value)
        for key, (path, value) in origin.items():
            self._own[path] += self.size(value)
            if key in base:
                self._shadowed[(chain, key)] += 1

    def by_path(self) -> Counter[str]:
        """Bytes carried by all hosts, by the key path they come from."""
        total: Counter[str] = Counter(self._own)
        for chain, hosts in self._base_hosts.items():
            for key, (path, size) in self._bases[chain].items():
                total[path] += size * (hosts - self._shadowed[(chain, key)])
        return total

    def check(self, source: str, limit: int) -> None:
        """Raise `InventoryError` (one problem, at the heaviest key path) when the hosts
        carry more than `limit` bytes in all; a `limit` of 0 or less checks nothing."""
        if limit <= 0:
            return
        weights = self.by_path()
        total = sum(weights.values())
        if total <= limit:
            return
        path, heaviest = weights.most_common(1)[0]
        message = (
            f"the hosts would carry {total} bytes of variable values once defaults and "
            f"group vars are applied (limit {limit}, FLEET_INVENTORY_MAX_BYTES); "
            f"{heaviest} of them from this value"
        )
        raise InventoryError(source, InventoryProblem(path, message))
