"""Celery tasks: thin adapters over `fleet.lifecycle` (decode, call, encode)."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from fleet.inventory.hosts import Host
from fleet.lifecycle import finalize_run, run_host_job
from fleet.worker import exec_options, execute_allowed, worker_store

RUN_ON_HOST = "fleet.run_on_host"
AGGREGATE = "fleet.aggregate"


# shared_task: registered on every fleet app (the worker's, and one made for explicit
# settings by the Python API), not only the one built from the environment.
# Ack timing and prefetch come from fleet.celery_config, per broker (a site cannot weaken them).
@shared_task(name=RUN_ON_HOST, bind=True)  # type: ignore[untyped-decorator]
def run_on_host(
    self: Task, run_id: str, host: dict[str, Any], command: str, options: dict[str, Any]
) -> dict[str, Any]:
    result = run_host_job(
        worker_store(),
        run_id,
        Host.from_dict(host),
        command,
        exec_options(options),
        worker=str(self.request.hostname or "unknown"),
        execute=execute_allowed,
    )
    return {"host": result.host, "status": result.status.value}


@shared_task(name=AGGREGATE)  # type: ignore[untyped-decorator]
def aggregate(_results: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    # The chord's inputs only say "every member returned"; the store holds the truth
    # (a duplicated delivery may have returned `interrupted` for a host that is fine).
    report = finalize_run(worker_store(), run_id)
    return {"run_id": run_id, "finished": report is not None}
