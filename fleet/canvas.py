"""A run's Celery canvas: the chord of one batch, and publishing the batches after it.

`build_canvas` is the one place a task message is shaped: `run_on_host` per host, on
its queue, then `aggregate`, which publishes the next batch of a rolling run
(`publish_batch`, from the run store). Tasks are named, not imported, so the tasks
module can publish too.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fleet import affinity
from fleet.command import ExecOptions
from fleet.inventory.hosts import DEFAULT_QUEUE, Host
from fleet.lifecycle import RunRequest
from fleet.publishing import is_redis_backend, publish
from fleet.results import RunRecord
from fleet.store.protocol import RunStore
from fleet.task_names import AGGREGATE, RUN_ON_HOST


def task_host(host: Host) -> dict[str, Any]:
    """The host as it travels in a task message: connection values only, no free vars."""
    data = host.to_dict()
    data.pop("vars", None)
    return data


def queue_for(host: Host, *, embedded: bool) -> str:
    # The in-process worker consumes one queue; routing matters only across machines.
    return DEFAULT_QUEUE if embedded else (host.queue or DEFAULT_QUEUE)


def build_canvas(
    run: RunRecord,
    request: RunRequest,
    *,
    embedded: bool,
    app: Any,
    batch: int = 0,
    routes: Mapping[str, str] | None = None,
) -> Any:
    """The chord of one batch of the run (the whole run when it is not batched), unsent:
    one `run_on_host` per host of `request.hosts` on its queue, then `aggregate`, which
    publishes the next batch (`publish_batch`). `routes`: host name -> the personal
    queue of the worker holding its connection (`fleet.affinity.routes`); a host not in
    it goes to its plain queue.

    Every message expires at the run's deadline: a message that sits in the broker
    longer (no worker on its queue) is dropped instead of running after the run ended.
    """
    from celery import chord, group

    expires = datetime.fromtimestamp(run.deadline, UTC)
    # Paths on the submitter's machine mean nothing on a worker's (fleet.worker).
    options = request.options.to_message()
    routes = routes or {}
    ignore_result = counts_chord_natively(app)
    members = [
        app.signature(
            RUN_ON_HOST,
            args=(run.run_id, task_host(h), request.command, options),
            kwargs=_host_kwargs(run),
            queue=routes.get(h.name) or queue_for(h, embedded=embedded),
            expires=expires,
            # What Flower and worker logs show. Celery's own repr of the arguments cost
            # 10 % of the submitter's CPU at 200 hosts (bench/README.md).
            argsrepr=f"({run.run_id!r}, {h.name!r})",
            kwargsrepr="{}",
            ignore_result=ignore_result,
        )
        for h in request.hosts
    ]
    callback = app.signature(
        AGGREGATE,
        args=(run.run_id,),
        kwargs={"batch": batch} if run.batches else {},
        queue=callback_queue(request.hosts, embedded=embedded),
        expires=expires,
    )
    return chord(group(members), callback, app=app)


def counts_chord_natively(app: Any) -> bool:
    """True when the result backend counts a chord's members without their stored
    results (Celery's Redis backend: ``on_chord_part_return`` keeps each member's return
    value in the chord's own key). Then members need no result of their own: no result
    key and no PUBLISH per host on the worker, no SUBSCRIBE per message on the submitter.
    The in-memory backend of embedded mode joins the stored results, so there they stay.
    """
    return is_redis_backend(app.backend)


def _host_kwargs(run: RunRecord) -> dict[str, Any]:
    """`run_on_host`'s keyword arguments: only those the run uses (older workers know
    none of them). `action` is the run's file work (fleet.actions), never file content."""
    kwargs: dict[str, Any] = {"fanout": run.fanout} if run.fanout else {}
    if run.action is not None:
        kwargs["action"] = dict(run.action)
    return kwargs


def callback_queue(hosts: tuple[Host, ...], *, embedded: bool) -> str:
    """Where the chord callback goes: a queue this run's own hosts use, so it is served
    whenever the run's tasks are (the default queue may have no worker at all)."""
    queues = [queue_for(h, embedded=embedded) for h in hosts]
    return DEFAULT_QUEUE if DEFAULT_QUEUE in queues or not queues else queues[0]


def publish_batch(
    store: RunStore, run_id: str, batch: int, *, embedded: bool, app: Any, affinity_on: bool
) -> None:
    """Publish batch `batch` (0-based) of a recorded run, as `submit_run` published the
    first: the hosts and options come from the run store. Raises `BackendError`."""
    run = store.get_run(run_id)
    names = set(run.batches[batch])
    hosts = tuple(h for h in store.run_hosts(run_id) if h.name in names)
    request = RunRequest(
        command=run.command,
        pattern=run.pattern,
        hosts=hosts,
        options=ExecOptions.from_dict(run.options),
        schedule=run.schedule,
    )
    routes = affinity.routes(store, hosts, embedded=embedded, enabled=affinity_on)
    publish(build_canvas(run, request, embedded=embedded, app=app, batch=batch, routes=routes), app)
