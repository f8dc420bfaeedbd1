"""Rolling runs over a run store (`fleet.rollout` says what they mean): what to do after
a batch (`next_batch`) and the `--fanout` slots a host takes before it starts
(`take_fanout_slot`). No Celery here: `fleet.tasks` publishes what these decide.
"""

from __future__ import annotations

from typing import Any

from fleet.command import ExecOptions
from fleet.errors import FleetError
from fleet.lifecycle import host_budget
from fleet.results import HostResult, RunRecord, Status
from fleet.rollout import BATCH_CLAIM, fanout_scope, skipped_message
from fleet.store.protocol import FINALIZER, RunStore, Slot

#: A --fanout slot outlives its host's own limits by this much (seconds) before it frees
#: itself; a slot whose options cannot be read is held this long.
FANOUT_HOLD_MARGIN_S = 10.0
DEFAULT_FANOUT_HOLD_S = 600.0


def take_fanout_slot(
    store: RunStore, run_id: str, host: str, fanout: int, options: dict[str, Any]
) -> Slot:
    """Take one of the run's `fanout` slots for `host` before it starts (`--fanout`).

    The slot is held at most as long as the host can take (its connect, auth and
    command timeouts, from the task's `options`, plus a margin): a worker killed while
    holding it cannot keep it. Raises `BackendError`.
    """
    try:
        hold_s = host_budget(ExecOptions.from_dict(options)) + FANOUT_HOLD_MARGIN_S
    except (TypeError, ValueError, FleetError):
        hold_s = DEFAULT_FANOUT_HOLD_S
    return store.take_slot(fanout_scope(run_id), host, max(1, fanout), hold_s)


def owns_fanout_slot(slot: Slot, result: HostResult | None) -> bool:
    """Whether the delivery that got `slot` for a host, and then `result` for it (None:
    it did not run the host: found it claimed, or raised), gives the host's `--fanout`
    slot back.

    A slot is held per host, and every delivery of the host's task message finds it
    under the same name. One that found it held already (`Slot.HELD`) and then found
    the host claimed is a copy of a delivery still running the host: freeing the slot
    would let one host more run at once. One that found it held and ran the host owns
    it (the earlier delivery died before claiming the host).
    """
    return slot is Slot.TAKEN or (slot is Slot.HELD and result is not None)


def next_batch(store: RunStore, run_id: str, done: int, *, worker: str) -> int | None:
    """After batch `done` (0-based) ended: the index of the batch to publish now, or None.

    None when the run is not batched, was the last batch, is no longer running
    (cancelled: its unstarted hosts are already `cancelled`), or when the hosts not
    `ok` so far reached the run's `max_fail`: then every host of the later batches is
    claimed and recorded `skipped`, so no message can start it afterwards. Called by
    every delivery of a batch's chord callback; only the first gets the index.
    Raises `BackendError`.
    """
    run = store.get_run(run_id)
    following = done + 1
    if following >= len(run.batches) or run.state != "running":
        return None
    if run.max_fail is not None:
        started = {name for names in run.batches[:following] for name in names}
        results = store.results(run_id)
        not_ok = sum(1 for name in started if name in results and not results[name].ok)
        if not_ok >= run.max_fail:
            _skip_rest(store, run, following)
            return None
    if not store.claim_host(run_id, BATCH_CLAIM.format(following), worker):
        return None
    store.add_event(
        run_id,
        {"type": "batch", "index": str(following + 1), "count": str(len(run.batches))},
    )
    return following


def _skip_rest(store: RunStore, run: RunRecord, first: int) -> None:
    _close_rest(store, run, first, Status.SKIPPED, skipped_message(run))


def abandon_rest(store: RunStore, run_id: str, batch: int, failure: str) -> None:
    """The broker failed while batch `batch` (0-based) was being published (`failure`:
    one line). Every host of that batch and the later ones that has not started is
    claimed and recorded `error`, naming the failure, so no message that did reach the
    broker can start it afterwards; the run then finishes from the store like any
    other. Raises `BackendError`."""
    run = store.get_run(run_id)
    message = f"not started: the broker failed while batch {batch + 1} was published: {failure}"
    _close_rest(store, run, batch, Status.ERROR, message)


def _close_rest(store: RunStore, run: RunRecord, first: int, status: Status, message: str) -> None:
    addresses = {h.name: h.address for h in store.run_hosts(run.run_id)}
    for names in run.batches[first:]:
        for name in names:
            if store.claim_host(run.run_id, name, FINALIZER):
                result = HostResult.not_run(name, status, message, addresses.get(name, ""))
                store.save_result(run.run_id, result)
