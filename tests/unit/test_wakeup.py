"""fleet.wakeup's re-check on the worker's event loop, without a broker.

`_when_free` runs on the loop's thread while pool threads add and remove Celery's
request records. Anything it raises ends the worker ("Unrecoverable error"), which
once happened under load: iterating Celery's `reserved_requests` (a WeakSet) while a
pool thread changed it raised "Set changed size during iteration".
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from celery.worker import state

from fleet import wakeup


class RecordingHub:
    def __init__(self) -> None:
        self.later: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> None:
        self.later.append((delay, fn, args))

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.later.append((0.0, fn, args))


class FakeRequest:
    def __init__(self, task_id: str) -> None:
        self.id = task_id


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> RecordingHub:
    recording = RecordingHub()
    monkeypatch.setattr(wakeup, "_hub", recording)
    return recording


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeRequest]]:
    """Requests as Celery's `task_reserved` records them, removed again afterwards."""
    keep: list[FakeRequest] = []
    yield keep
    for request in keep:
        state.task_ready(request)


def test_rechecks_while_the_task_still_holds_its_slot(
    hub: RecordingHub, held: list[FakeRequest]
) -> None:
    request = FakeRequest("t-1")
    held.append(request)
    state.task_reserved(request)
    wakeup._when_free("t-1", 0)
    assert [(delay, args) for delay, _, args in hub.later] == [(wakeup.RECHECK_S, ("t-1", 1))]


def test_stops_once_the_slot_is_free(hub: RecordingHub) -> None:
    wakeup._when_free("t-gone", 0)
    assert hub.later == []


def test_gives_up_after_the_most_tries(hub: RecordingHub, held: list[FakeRequest]) -> None:
    request = FakeRequest("t-2")
    held.append(request)
    state.task_reserved(request)
    wakeup._when_free("t-2", wakeup.RECHECK_TRIES)
    assert hub.later == []


def test_never_raises_while_pool_threads_change_the_records(
    hub: RecordingHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Celery's own containers, changed by another thread as fast as it can.
    reserved: weakref.WeakSet[FakeRequest] = weakref.WeakSet()
    requests: dict[str, FakeRequest] = {}
    monkeypatch.setattr(state, "reserved_requests", reserved)
    monkeypatch.setattr(state, "requests", requests)
    pool = [FakeRequest(f"t-{k}") for k in range(200)]
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for request in pool:
                requests[request.id] = request
                reserved.add(request)
            for request in pool:
                requests.pop(request.id, None)
                reserved.discard(request)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for k in range(20_000):
            wakeup._when_free(f"t-{k % 200}", 0)
    finally:
        stop.set()
        thread.join()
