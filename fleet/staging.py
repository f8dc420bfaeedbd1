"""Files staged in the run store, so file content never travels in a task message.

The submitter of `fleet script`/`fleet copy` stages the local file once per run
(`stage_file`: `CHUNK` bytes per store entry, expiring with the run); each worker process
reads it back once per run into a private cache file and checks its size and sha256
(`StagedCache.use`). `fleet fetch` goes the other way: a worker stages what it read
from a host (`stage_file` under `fetched_name(host)`), the submitter reads it back
(`read_staged`). `discard` deletes a run's staged files once the run is over.

Raises `BackendError` when the store fails, `StagingError` when a staged file is missing
or does not match its size and sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
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


@dataclass
class _Run:
    """One run's files in a `StagedCache`, and how many callers use them right now."""

    paths: set[Path] = field(default_factory=set)
    users: int = 0


class StagedCache:
    """A worker process's local copies of staged files: one download per run and file,
    whatever the number of hosts and threads; private (0700 directory, 0600 files).

    Bounded, least recently used first out: every `use` makes its run the most recent
    (a cache hit too), and once more than `CACHED_RUNS` runs are cached the oldest
    runs' files are deleted. A run a caller still uses (inside `use`) is passed over:
    its host's thread opens the file only after an SSH round trip, while threads of
    newer runs stage theirs, and deleting it then failed the host with "SFTP: No such
    file or directory". So runs in use can keep the cache above `CACHED_RUNS` for a
    while (when more than `CACHED_RUNS` are in use at once); the last user of a run
    trims the cache back on leaving, deleting its own run's files if they are the
    oldest not in use.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        #: Least recently used first.
        self._runs: OrderedDict[str, _Run] = OrderedDict()

    def _directory(self) -> Path:
        if self._root is None or self._pid != os.getpid():
            self._root = Path(tempfile.mkdtemp(prefix="fleet-staged-"))
            if self._pid != os.getpid():  # a forked child: the parent's files are not ours
                self._runs = OrderedDict()
                self._locks = {}
            self._pid = os.getpid()
        return self._root

    @contextlib.contextmanager
    def use(self, store: RunStore, run_id: str, staged: Staged) -> Iterator[Path]:
        """A local file holding `staged`, checked, kept until the `with` block ends
        (eviction waits for it), and made the most recently used run.
        Raises `StagingError`, `BackendError` on entering."""
        key = (run_id, staged.name)
        with self._lock:
            target = self._directory() / f"{run_id}.{staged.name.replace(':', '_')}"
            run = self._runs.setdefault(run_id, _Run())
            run.users += 1
            self._runs.move_to_end(run_id)
            lock = self._locks.setdefault(key, threading.Lock())
        try:
            with lock:
                if not target.exists():
                    self._download(store, run_id, staged, target)
            with self._lock:
                run.paths.add(target)
                self._trim()  # only now: a failed download evicts nothing
            yield target
        finally:
            with self._lock:
                run.users -= 1
                if not run.users and not run.paths and self._runs.get(run_id) is run:
                    self._forget(run_id)  # its download failed: nothing to keep
                self._trim()

    @staticmethod
    def _download(store: RunStore, run_id: str, staged: Staged, target: Path) -> None:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as sink:
                read_staged(store, run_id, staged, sink)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _trim(self) -> None:
        """Delete the least recently used runs not in use while more than `CACHED_RUNS`
        are cached. Called with `_lock` held."""
        excess = len(self._runs) - CACHED_RUNS
        for run_id, run in list(self._runs.items()):
            if excess <= 0:
                break
            if run.users:
                continue
            for path in run.paths:
                path.unlink(missing_ok=True)
            self._forget(run_id)
            excess -= 1

    def _forget(self, run_id: str) -> None:
        """Drop the run's entry and download locks (no user left). With `_lock` held."""
        del self._runs[run_id]
        for key in [k for k in self._locks if k[0] == run_id]:
            del self._locks[key]

    def clear(self) -> None:
        with self._lock:
            if self._root is not None and self._pid == os.getpid():
                shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._runs.clear()
            self._locks.clear()
