"""Celery tasks: thin adapters over `fleet.jobs` (decode, call, encode)."""

from __future__ import annotations

from typing import Any

from celery import Task

from fleet.celery import app, worker_store
from fleet.execute import ExecOptions, execute
from fleet.hosts import Host
from fleet.jobs import finalize_run, run_host_job

RUN_ON_HOST = "fleet.run_on_host"
AGGREGATE = "fleet.aggregate"


@app.task(name=RUN_ON_HOST, bind=True, acks_late=False)  # type: ignore[untyped-decorator]
def run_on_host(
    self: Task, run_id: str, host: dict[str, Any], command: str, options: dict[str, Any]
) -> dict[str, Any]:
    result = run_host_job(
        worker_store(),
        run_id,
        Host.from_dict(host),
        command,
        ExecOptions.from_dict(options),
        worker=str(self.request.hostname or "unknown"),
        execute=execute,
    )
    return {"host": result.host, "status": result.status.value}


@app.task(name=AGGREGATE)  # type: ignore[untyped-decorator]
def aggregate(_results: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    # The chord's inputs only say "every member returned"; the store holds the truth
    # (a duplicated delivery may have returned `interrupted` for a host that is fine).
    report = finalize_run(worker_store(), run_id)
    return {"run_id": run_id, "finished": report is not None}
