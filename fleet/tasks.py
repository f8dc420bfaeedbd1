"""Celery tasks: thin adapters over `fleet.lifecycle` (decode, call, encode)."""

from __future__ import annotations

import random
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Ignore
from celery.utils.log import get_logger

from fleet.batches import abandon_rest, next_batch, owns_fanout_slot, take_fanout_slot
from fleet.canvas import publish_batch
from fleet.errors import BackendError
from fleet.inventory.hosts import Host
from fleet.lifecycle import AlreadyClaimed, finalize_run, run_host_job
from fleet.pool_request import PoolLossRequest
from fleet.results import HostResult
from fleet.rollout import fanout_scope
from fleet.store.protocol import Slot
from fleet.task_names import AGGREGATE, RUN_ON_HOST
from fleet.textsafe import exception_line
from fleet.worker import (
    action_executor,
    exec_options,
    execute_allowed,
    worker_settings,
    worker_store,
)

log = get_logger(__name__)

#: Seconds (doubled at random) before a task waiting for one of its run's --fanout slots
#: asks again, growing by the step per retry up to the most: a long wait asks less often.
FANOUT_RETRY_S = 0.2
FANOUT_RETRY_STEP_S = 0.05
FANOUT_RETRY_MAX_S = 1.0


# shared_task: registered on every fleet app (the worker's, and one made for explicit
# settings by the Python API), not only the one built from the environment.
# Ack timing and prefetch come from fleet.celery_config, per broker (a site cannot weaken them).
# Request: a host whose prefork pool process dies is recorded at once (fleet.pool_loss).
@shared_task(name=RUN_ON_HOST, bind=True, max_retries=None, Request=PoolLossRequest)  # type: ignore[untyped-decorator]
def run_on_host(
    self: Task,
    run_id: str,
    host: dict[str, Any],
    command: str,
    options: dict[str, Any],
    fanout: int | None = None,
    action: dict[str, Any] | None = None,
) -> dict[str, Any]:
    store = worker_store()
    name = str(host.get("name", ""))
    slot = Slot.FULL
    if fanout:
        slot = take_fanout_slot(store, run_id, name, int(fanout), options)
        if not slot:
            # Every slot of the run's --fanout is taken: come back later, holding no
            # worker slot meanwhile. The message's expiry (the run's deadline) bounds it.
            tries = int(self.request.retries or 0)
            pause = min(FANOUT_RETRY_MAX_S, FANOUT_RETRY_S + FANOUT_RETRY_STEP_S * tries)
            raise self.retry(countdown=pause * (1 + random.random()))
    result: HostResult | None = None
    try:
        result = run_host_job(
            store,
            run_id,
            Host.from_dict(host),
            command,
            exec_options(options),
            worker=str(self.request.hostname or "unknown"),
            # action: a script, copy or fetch (fleet.actions), checked by the worker.
            execute=execute_allowed if action is None else action_executor(run_id, action),
        )
    except AlreadyClaimed as claimed:
        if not claimed.closed:
            # A copy of a message whose delivery still holds the host: only that one may
            # count in the chord, or the callback fires (and the next batch starts) while
            # the host still runs. Celery acks an ignored task and neither stores its
            # result nor counts it in the chord (celery.app.trace, `Ignore`).
            raise Ignore() from None
        # The run's end settled this host: counting it lets the chord finish.
        return {"host": claimed.host, "status": None, "not_run": "closed by the run's end"}
    finally:
        if fanout and owns_fanout_slot(slot, result):
            try:
                store.release_slot(fanout_scope(run_id), name)
            except BackendError as exc:
                # Not raised: it would replace the host's outcome (or the copy's Ignore)
                # and fail the chord. The slot frees itself at the end of its hold time.
                log.warning("fanout slot of %s in run %s not released: %s", name, run_id, exc)
    return {"host": result.host, "status": result.status.value}


@shared_task(name=AGGREGATE, bind=True)  # type: ignore[untyped-decorator]
def aggregate(
    self: Task, _results: list[dict[str, Any]], run_id: str, batch: int | None = None
) -> dict[str, Any]:
    # The chord's inputs only say "every member returned"; the store holds the truth
    # (a late message of a settled host returns no status).
    store = worker_store()
    if batch is not None:
        following = next_batch(store, run_id, int(batch), worker=str(self.request.hostname))
        if following is not None:
            settings = worker_settings()
            try:
                publish_batch(
                    store,
                    run_id,
                    following,
                    embedded=settings.is_embedded,
                    app=self.app,
                    affinity_on=settings.host_affinity,
                )
            except Exception as exc:  # the broker, mid-batch: part of it may have gone out
                failure = exception_line(exc)
                log.error("fleet: run %s: batch %d not sent: %s", run_id, following + 1, failure)
                abandon_rest(store, run_id, following, failure)
    report = finalize_run(store, run_id)
    return {"run_id": run_id, "finished": report is not None}
