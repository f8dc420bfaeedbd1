"""Files staged in the run store, so file content never travels in a task message.

The submitter of `fleet script`/`fleet copy` stages the local file once per run
(`stage_file`: `CHUNK` bytes per store entry, expiring with the run); each worker process
reads it back once per run into a private cache file and checks its size and sha256
(`StagedCache.path`). `fleet fetch` goes the other way: a worker stages what it read
from a host (`stage_file` under `fetched_name(host)`), the submitter reads it back
(`read_staged`). `discard` deletes a run's staged files once the run is over.

Raises `BackendError` when the store fails, `StagingError` when a staged file is missing
or does not match its size and sha256.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from fleet.actions import Staged
from fleet.errors import FleetError
from fleet.store.protocol import RunStore

#: Bytes per store entry: bounded, so no message or value is ever large.
CHUNK = 1 << 20
#: Staged files outlive the run's deadline by this much (seconds), then expire.
GRACE_S = 3600
#: The source file's name in the store.
SOURCE = "source"
#: Runs whose staged files a worker process keeps in its cache at once.
CACHED_RUNS = 4


class StagingError(FleetError):
    """A staged file is missing from the run store, or differs from what was staged."""


def sha256_file(path: Path) -> tuple[int, str]:
    """Size (bytes) and sha256 (hex) of a local file. Raises `OSError`."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def fetched_name(host: str) -> str:
    """The store name of the file fetched from `host` (hex: any host name fits)."""
    return "fetch:" + host.encode("utf-8", "surrogatepass").hex()[:58]


def stage_file(store: RunStore, run_id: str, name: str, path: Path, ttl_s: int) -> Staged:
    """Copy the local file at `path` into the store as `name`, in `CHUNK`-byte entries
    kept `ttl_s` seconds. Raises `OSError` (reading), `BackendError`."""
    digest = hashlib.sha256()
    size = 0
    index = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            store.blob_put_chunk(run_id, name, index, chunk, ttl_s)
            digest.update(chunk)
            size += len(chunk)
            index += 1
    if index == 0:  # an empty file: one empty entry, so "staged" and "missing" differ
        store.blob_put_chunk(run_id, name, 0, b"", ttl_s)
    return Staged(name, size, digest.hexdigest())


def read_staged(store: RunStore, run_id: str, staged: Staged, sink: BinaryIO) -> None:
    """Write the staged file into `sink`, checking it is whole and unchanged.
    Raises `StagingError`, `BackendError`."""
    digest = hashlib.sha256()
    size = 0
    index = 0
    while size < staged.size or index == 0:
        chunk = store.blob_chunk(run_id, staged.name, index)
        if chunk is None:
            raise StagingError(
                f"staged file {staged.name} of run {run_id} is missing from the run store "
                "(expired, or the run was cleaned up)"
            )
        digest.update(chunk)
        sink.write(chunk)
        size += len(chunk)
        index += 1
        if size > staged.size:
            break
    if size != staged.size or digest.hexdigest() != staged.sha256:
        raise StagingError(
            f"staged file {staged.name} of run {run_id} does not match its size and sha256"
        )


def discard(store: RunStore, run_id: str) -> None:
    """Delete every file staged for the run. Raises `BackendError`."""
    store.blob_delete(run_id)


class StagedCache:
    """A worker process's local copies of staged files: one download per run and file,
    whatever the number of hosts and threads; private (0700 directory, 0600 files);
    the oldest runs' copies are removed once more than `CACHED_RUNS` are held."""

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._runs: OrderedDict[str, list[Path]] = OrderedDict()

    def _directory(self) -> Path:
        if self._root is None or self._pid != os.getpid():
            self._root = Path(tempfile.mkdtemp(prefix="fleet-staged-"))
            self._pid = os.getpid()
        return self._root

    def path(self, store: RunStore, run_id: str, staged: Staged) -> Path:
        """A local file holding `staged`, checked. Raises `StagingError`, `BackendError`."""
        key = (run_id, staged.name)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
            target = self._directory() / f"{run_id}.{staged.name.replace(':', '_')}"
        with lock:
            if target.exists():
                return target
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            try:
                with os.fdopen(fd, "wb") as sink:
                    read_staged(store, run_id, staged, sink)
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
        self._remember(run_id, target)
        return target

    def _remember(self, run_id: str, target: Path) -> None:
        with self._lock:
            self._runs.setdefault(run_id, []).append(target)
            self._runs.move_to_end(run_id)
            while len(self._runs) > CACHED_RUNS:
                old_run, paths = self._runs.popitem(last=False)
                for path in paths:
                    path.unlink(missing_ok=True)
                for key in [k for k in self._locks if k[0] == old_run]:
                    del self._locks[key]

    def clear(self) -> None:
        with self._lock:
            if self._root is not None and self._pid == os.getpid():
                shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._runs.clear()
            self._locks.clear()
