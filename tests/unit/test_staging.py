"""fleet.staging's per-worker cache of staged files, without Celery or SSH.

A host's thread of a copy/script run holds the cached file while it makes the remote
temporary directory (an SSH round trip) and uploads it; threads of newer runs on the
same worker stage their files meanwhile. Eviction once deleted the held file, and the
host ended `error` "SFTP: No such file or directory" for a file fleet itself removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from fleet.actions import Staged
from fleet.staging import CACHED_RUNS, StagedCache, StagingError

PAYLOAD = b"payload"
STAGED = Staged("source", len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest())


class Store:
    """The run store's staged-file reads: every run staged PAYLOAD; counts downloads."""

    def __init__(self, missing: frozenset[str] = frozenset()) -> None:
        self.missing = missing
        self.reads: list[str] = []

    def blob_chunk(self, run_id: str, name: str, index: int) -> bytes | None:
        if run_id in self.missing:
            return None
        if index == 0:
            self.reads.append(run_id)
            return PAYLOAD
        return None


def cached(tmp_path: Path) -> set[Path]:
    return {p for p in tmp_path.iterdir() if not p.name.startswith(".")}


def stage(cache: StagedCache, store: Any, run_id: str) -> Path:
    with cache.use(store, run_id, STAGED) as path:
        assert path.read_bytes() == PAYLOAD
        return path


def test_a_held_file_survives_newer_runs(tmp_path: Path) -> None:
    cache = StagedCache(tmp_path)
    store: Any = Store()
    # Two hosts of run A: a download, then a hit, each held through the SSH round trip
    # before its upload ...
    with cache.use(store, "run-a", STAGED) as first, cache.use(store, "run-a", STAGED) as held:
        assert held == first
        # ... while threads of CACHED_RUNS newer runs stage their files.
        threads = [
            threading.Thread(target=stage, args=(cache, store, f"run-{i}"))
            for i in range(CACHED_RUNS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert held.read_bytes() == PAYLOAD  # what put_file opens now
    assert store.reads.count("run-a") == 1  # one download per run, whatever the hosts
    # Released, run A is the least recently used: the next run evicts it.
    assert len(cached(tmp_path)) == CACHED_RUNS
    stage(cache, store, "run-next")
    assert not held.exists()
    assert len(cached(tmp_path)) == CACHED_RUNS


def test_a_held_file_over_the_bound_goes_when_released(tmp_path: Path) -> None:
    cache = StagedCache(tmp_path)
    store: Any = Store()
    with contextlib.ExitStack() as newer:
        with cache.use(store, "run-a", STAGED) as held:
            for i in range(CACHED_RUNS):  # newer runs, each still in its upload
                newer.enter_context(cache.use(store, f"run-{i}", STAGED))
            assert held.read_bytes() == PAYLOAD
            assert len(cached(tmp_path)) == CACHED_RUNS + 1  # over the bound while in use
        assert not held.exists()  # its last user gone, the oldest run is deleted
        assert len(cached(tmp_path)) == CACHED_RUNS


def test_a_hit_makes_the_run_the_most_recently_used(tmp_path: Path) -> None:
    cache = StagedCache(tmp_path)
    store: Any = Store()
    paths = [stage(cache, store, f"run-{i}") for i in range(CACHED_RUNS)]
    assert stage(cache, store, "run-0") == paths[0]  # a hit on the oldest run ...
    newest = stage(cache, store, "run-new")  # ... so the next eviction takes run-1
    assert paths[0].exists() and not paths[1].exists()
    assert cached(tmp_path) == {paths[0], *paths[2:], newest}
    assert store.reads.count("run-0") == 1


def test_the_cache_stays_bounded_once_nothing_is_held(tmp_path: Path) -> None:
    cache = StagedCache(tmp_path)
    store: Any = Store()
    with cache.use(store, "held-1", STAGED), cache.use(store, "held-2", STAGED):
        for i in range(3 * CACHED_RUNS):
            stage(cache, store, f"run-{i}")
            assert len(cached(tmp_path)) <= CACHED_RUNS  # held runs count, idle go first
    for i in range(3 * CACHED_RUNS, 4 * CACHED_RUNS):
        stage(cache, store, f"run-{i}")
    assert len(cached(tmp_path)) == CACHED_RUNS


def test_a_failed_download_keeps_no_entry(tmp_path: Path) -> None:
    cache = StagedCache(tmp_path)
    store: Any = Store(missing=frozenset({"gone"}))
    paths = [stage(cache, store, f"run-{i}") for i in range(CACHED_RUNS)]
    with pytest.raises(StagingError):
        stage(cache, store, "gone")
    assert cached(tmp_path) == set(paths)  # the failed run evicted nothing
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".part-")]
    stage(cache, store, "run-next")  # and left no entry taking a place in the bound
    assert not paths[0].exists() and all(p.exists() for p in paths[1:])
