"""The work behind the Celery tasks, as plain functions over a run store.

`run_host_job` is what one per-host task does; `finalize_run` turns whatever the
store holds into a finished run. Neither imports Celery, so both are tested with
an SQLite store and a scripted execute function.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from fleet.errors import BackendError
from fleet.execute import ExecOptions
from fleet.hosts import Host
from fleet.results import HostResult, RunReport, Status, utc_now
from fleet.store_api import RunStore

ExecuteFn = Callable[[Host, str, ExecOptions], HostResult]

LOST_MESSAGE = "no result by the run deadline (the worker may have died or the message was lost)"
CANCELLED_MESSAGE = "run cancelled before this host started"
EXPIRED_MESSAGE = "run already finished when this host's task arrived"
#: How long a finished command's result is retried into an unreachable store (a restart).
SAVE_RETRY_S = 20.0
SAVE_RETRY_FIRST_DELAY_S = 0.2
SAVE_RETRY_MAX_DELAY_S = 2.0

log = logging.getLogger(__name__)


def run_host_job(
    store: RunStore,
    run_id: str,
    host: Host,
    command: str,
    options: ExecOptions,
    *,
    worker: str,
    execute: ExecuteFn,
    save_retry_s: float = SAVE_RETRY_S,
) -> HostResult:
    """Run `command` on `host` at most once for this run, and record the result.

    The claim is taken before the host is touched: a message delivered twice (broker
    redelivery, a replay) finds the claim taken and never runs the command again.
    Once the command has run, a store outage is retried for `save_retry_s` (never by
    running the command again); if the store stays down the host ends `lost` at the
    run's deadline. Raises `BackendError` only before the command ran.
    """
    if not store.is_live(run_id):
        return _refuse_dead_run(store, run_id, host, worker)
    if not store.claim_host(run_id, host.name, worker):
        # Another delivery of this message owns the host; its result (or the
        # deadline's `lost`) is the one that counts, so nothing is stored here.
        store.add_event(run_id, {"type": "duplicate", "host": host.name, "worker": worker})
        return HostResult(
            host=host.name,
            status=Status.INTERRUPTED,
            address=host.address,
            error="duplicate delivery: this host was already claimed in this run; not run again",
            worker=worker,
            finished_at=utc_now(),
        )
    # A progress event is worth less than the run: the host is claimed, so go on.
    with contextlib.suppress(BackendError):
        store.add_event(run_id, {"type": "started", "host": host.name, "worker": worker})
    env = {**options.env, "FLEET_RUN_ID": run_id, "FLEET_HOST": host.name}
    result = execute(host, command, replace(options, env=env)).with_worker(worker)
    _save_with_retry(store, run_id, result, save_retry_s)
    return result


def _save_with_retry(store: RunStore, run_id: str, result: HostResult, budget_s: float) -> None:
    give_up = time.monotonic() + budget_s
    delay = SAVE_RETRY_FIRST_DELAY_S
    while True:
        try:
            store.save_result(run_id, result)
            return
        except BackendError as exc:
            if time.monotonic() + delay > give_up:
                # Not raised: a raising chord member skips the callback, and the run's
                # deadline already accounts for this host (`lost`).
                log.warning("result of %s in run %s not stored: %s", result.host, run_id, exc)
                return
            time.sleep(delay)
            delay = min(delay * 2, SAVE_RETRY_MAX_DELAY_S)


def _refuse_dead_run(store: RunStore, run_id: str, host: Host, worker: str) -> HostResult:
    try:
        state = store.get_run(run_id).state
    except Exception:  # expired or unknown run: nothing to record it in
        state = "expired"
    status = Status.CANCELLED if state == "cancelled" else Status.LOST
    message = CANCELLED_MESSAGE if status is Status.CANCELLED else EXPIRED_MESSAGE
    result = HostResult.not_run(host.name, status, message, address=host.address)
    result = result.with_worker(worker)
    if state != "expired":
        store.save_result(run_id, result)
    return result


def finalize_run(store: RunStore, run_id: str, *, now: float | None = None) -> RunReport | None:
    """Finish the run if it can be finished now; return its report, else None.

    A run is finished when every host has a result; when the run was cancelled,
    hosts never claimed get `cancelled`; past the deadline, hosts still without a
    result get `lost`. Idempotent: callers (the chord callback, the following CLI,
    `fleet report`) may all call it.
    """
    now = time.time() if now is None else now
    run = store.get_run(run_id)
    results = store.results(run_id)
    missing = [name for name in run.hosts if name not in results]
    addresses = {h.name: h.address for h in store.run_hosts(run_id)} if missing else {}
    if missing and run.state == "cancelled":
        claimed = store.claimed_hosts(run_id, missing)
        for name in missing:
            if name not in claimed:
                store.save_result(run_id, _not_run(name, addresses, Status.CANCELLED))
    if missing and now >= run.deadline:
        for name in missing:
            store.save_result(run_id, _not_run(name, addresses, Status.LOST))
    if missing:
        results = store.results(run_id)
        if any(name not in results for name in run.hosts):
            return None
    finished_at = utc_now()
    store.set_state(run_id, "finished", expected="running", finished_at=finished_at)
    store.set_state(run_id, "cancelled", expected="cancelled", finished_at=finished_at)
    report = RunReport.assemble(store.get_run(run_id), list(results.values()))
    store.save_report(report)
    store.add_event(run_id, {"type": "finished"})
    return report


def _not_run(name: str, addresses: dict[str, str], status: Status) -> HostResult:
    message = LOST_MESSAGE if status is Status.LOST else CANCELLED_MESSAGE
    return HostResult.not_run(name, status, message, address=addresses.get(name, ""))


def cancel_run(store: RunStore, run_id: str) -> bool:
    """Mark the run cancelled: tasks not yet started will refuse to run. True if it was running."""
    changed = store.set_state(run_id, "cancelled", expected="running")
    if changed:
        store.add_event(run_id, {"type": "cancelled"})
        finalize_run(store, run_id)
    return changed
