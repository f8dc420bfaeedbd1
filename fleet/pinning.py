"""Hosts pinned to the worker's own inventory (``FLEET_WORKER_INVENTORY``).

A task message names a host and carries its connection values (address, port, user,
key, jump host, sudo, secret references). Whoever can write to the broker can write
those values too, and aim a worker's keys and secrets at any server. A worker given
its own copy of the inventory takes none of them from the message: it looks the host
up by name in its file and connects with the values found there; a name its file does
not hold is refused and never contacted. Signing (`fleet.signing`) says who sent a
message; pinning bounds what even a genuine sender can make a worker reach.

The file is read again when it changes (size or modification time), like beat's.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace

from fleet.errors import InventoryError, PatternError
from fleet.inventory.hosts import Host
from fleet.inventory.loader import Inventory, load_inventory
from fleet.settings import Settings

_lock = threading.Lock()
_cache: dict[str, tuple[tuple[int, int], Inventory]] = {}


def pinned_host(host: Host, settings: Settings) -> Host | str:
    """`host` as this worker's own inventory defines it, or why it is refused (a str).

    Without ``FLEET_WORKER_INVENTORY`` (and in embedded mode) `host` is returned as the
    message gave it. What the run itself sets per host (its queue) stays the message's.
    """
    path = settings.worker_inventory
    if not path or settings.is_embedded:
        return host
    try:
        inventory = _load(path, settings.inventory_max_bytes)
    except InventoryError as exc:
        first = exc.render().splitlines()[0] if exc.render() else str(exc)
        return f"its own inventory FLEET_WORKER_INVENTORY={path} cannot be read: {first}"
    try:
        own = inventory.host(host.name)
    except PatternError:
        return (
            f"host {host.name!r} is not in this worker's inventory "
            f"(FLEET_WORKER_INVENTORY={path}); it connects only to hosts listed there"
        )
    return replace(own, queue=host.queue)


def _load(path: str, max_bytes: int) -> Inventory:
    try:
        stat = os.stat(path)
        version = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = (0, 0)
    with _lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
    inventory = load_inventory(path, max_bytes=max_bytes)
    with _lock:
        _cache[path] = (version, inventory)
    return inventory
