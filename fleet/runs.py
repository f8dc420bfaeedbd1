"""Submitting a run as a Celery canvas, following its progress, cancelling it.

`submit_run` records the run first and publishes one chord: one `run_on_host` task
per host, routed to the host's queue, closed by `aggregate`. `follow_run` reads the
run's progress events from the store until every host has a status; past the run's
deadline it finishes the run itself, so a lost chord never leaves the caller waiting.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from fleet import affinity, audit, canvas
from fleet.errors import BackendError, FleetError, RunNotFoundError, UsageError
from fleet.lifecycle import RunRequest, cancel_run, finalize_run, new_run_id
from fleet.publishing import publish
from fleet.results import RunRecord, RunReport, utc_now
from fleet.runenv import stage_run_env
from fleet.settings import Settings, redact_url
from fleet.store.protocol import RunStore
from fleet.textsafe import exception_line

#: How often a follower checks that the run record still exists (a flushed store).
PRESENCE_CHECK_S = 2.0
#: A follower rides out a store outage this long past the run's deadline, then gives up.
OUTAGE_GRACE_S = 30.0
OUTAGE_FIRST_DELAY_S = 0.2
OUTAGE_MAX_DELAY_S = 2.0


@dataclass(frozen=True, slots=True)
class Progress:
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    started: int = 0
    elapsed_s: float = 0.0
    batch: int = 0  # 1-based number of the batch running, 0: not a batched run
    batches: int = 0

    @property
    def done(self) -> int:
        return sum(self.counts.values())


def build_canvas(
    run: RunRecord,
    request: RunRequest,
    *,
    embedded: bool,
    app: Any = None,
    routes: Mapping[str, str] | None = None,
) -> Any:
    """`fleet.canvas.build_canvas` with the environment's app by default."""
    if app is None:
        from fleet.celery import app
    return canvas.build_canvas(run, request, embedded=embedded, app=app, routes=routes)


def submit_run(
    store: RunStore,
    request: RunRequest,
    *,
    settings: Settings,
    deadline_s: float,
    run_id: str | None = None,
    signer: str | None = None,
) -> RunRecord:
    """Record the run and publish its canvas; `deadline_s` (seconds) comes from
    `fleet.lifecycle.run_deadline_s`; `signer`: the submitter's signing identity, if any.

    The audit entry (`fleet.audit`) is written first: when it cannot be, nothing is
    recorded or published (`BackendError`). Raises `BackendError`, `UsageError`."""
    from fleet.celery import app_for

    app = app_for(settings)

    if not request.hosts:
        raise UsageError("no hosts to run on")
    embedded = settings.is_embedded
    if not embedded:
        check_broker(app, settings)

    who = audit.who()
    run = RunRecord(
        run_id=run_id or new_run_id(),
        command=request.command,
        pattern=request.pattern,
        hosts=tuple(h.name for h in request.hosts),
        created_at=utc_now(),
        deadline=time.time() + deadline_s,
        user=f"beat@{audit.node()}" if request.schedule else audit.run_user(who, signer),
        schedule=request.schedule,
        options=request.options.to_dict(),
        batches=request.rollout.plan([h.name for h in request.hosts]),
        max_fail=request.rollout.fail_limit(len(request.hosts)),
        fanout=request.rollout.fanout,
        action=request.action.to_message() if request.action else None,
    )
    _audit_submit(store, run, who=who, signer=signer)
    # Before the record exists, so no worker can start a host without its values.
    stage_run_env(store, run.run_id, request.options, deadline_s)
    try:
        store.create_run(run, request.hosts)
    except BaseException:
        with contextlib.suppress(FleetError):
            store.drop_env(run.run_id)  # no run to need them: not kept until they expire
        raise
    try:
        if run.batches:
            store.add_event(
                run.run_id, {"type": "batch", "index": "1", "count": str(len(run.batches))}
            )
            first = set(run.batches[0])
            request = replace(request, hosts=tuple(h for h in request.hosts if h.name in first))
        # Each host to the worker holding its connection, when several serve its queue.
        routes = affinity.routes(
            store, request.hosts, embedded=embedded, enabled=settings.host_affinity
        )
        publish(build_canvas(run, request, embedded=embedded, app=app, routes=routes), app)
    except BaseException as exc:
        # Whatever was published before the failure (or Ctrl-C) must not run: the cancel
        # claims every host not yet started, so a message arriving later is refused.
        with contextlib.suppress(FleetError):
            if cancel_run(store, run.run_id):
                entry = audit.AuditEntry.for_run(audit.CANCEL, run, who=who, signer=signer)
                store.append_audit(entry)  # by fleet itself, on the submitter's behalf
        if not isinstance(exc, Exception):
            raise
        raise BackendError(
            f"broker at {redact_url(settings.broker_url or '')} failed while publishing "
            f"run {run.run_id}: {exc}; the run was cancelled"
        ) from exc
    return run


def check_broker(app: Any, settings: Settings, timeout: float = 3.0) -> None:
    """Raise `BackendError` within about `timeout` seconds if the broker cannot be reached."""
    url = redact_url(settings.broker_url or "")
    try:
        with app.connection_for_write(connect_timeout=timeout) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout
            )
    except Exception as exc:
        raise BackendError(f"broker at {url} unreachable: {exception_line(exc)}") from exc


def _audit_submit(store: RunStore, run: RunRecord, *, who: str, signer: str | None) -> None:
    # The audit is the record of who ran what: no entry, no run.
    try:
        store.append_audit(audit.AuditEntry.for_run(audit.SUBMIT, run, who=who, signer=signer))
    except BackendError as exc:
        raise BackendError(
            f"audit log not written, so run {run.run_id} was not submitted: {exc}"
        ) from exc


def record_cancel(store: RunStore, run_id: str, *, signer: str | None = None) -> None:
    """Append the audit entry of a cancel that happened (`fleet.lifecycle.cancel_run`
    returned True). Raises `BackendError`, saying the run is cancelled all the same."""
    try:
        run = store.get_run(run_id)
        entry = audit.AuditEntry.for_run(audit.CANCEL, run, who=audit.who(), signer=signer)
        store.append_audit(entry)
    except (BackendError, RunNotFoundError) as exc:
        raise BackendError(
            f"run {run_id} is cancelled, but its audit entry was not written: {exc}"
        ) from exc


def follow_run(
    store: RunStore,
    run_id: str,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    timeout: float | None = None,
    poll_ms: int = 250,
    outage_grace_s: float = OUTAGE_GRACE_S,
) -> RunReport | None:
    """Follow a run until every host has a status; return its report.

    Resumable: it starts from the results already stored. Past the run's deadline it
    finishes the run itself (hosts without a result become `lost`). Returns None if
    `timeout` passes first. A store outage (Redis restarting) is ridden out with
    backoff until the deadline plus `outage_grace_s`; only then is `BackendError` raised.
    """
    started = time.monotonic()
    run = store.get_run(run_id)
    created = _epoch(run.created_at)
    # Events replay from the start, so a follower that attaches late (or again) counts right.
    counts: dict[str, int] = {}
    started_hosts = 0
    batch = 0
    last_event = "0"
    delay = OUTAGE_FIRST_DELAY_S
    next_presence_check = time.monotonic() + PRESENCE_CHECK_S
    while True:
        try:
            report = store.load_report(run_id)
            if report is not None and report.is_complete:
                return report
            if sum(counts.values()) >= len(run.hosts) or time.time() >= run.deadline:
                report = finalize_run(store, run_id)
                if report is not None:
                    return report
            if timeout is not None and time.monotonic() - started >= timeout:
                return None
            if time.monotonic() >= next_presence_check:
                store.get_run(run_id)  # raises if the store lost the run under us
                next_presence_check = time.monotonic() + PRESENCE_CHECK_S
            events = store.events(run_id, after=last_event, block_ms=poll_ms)
        except RunNotFoundError as exc:
            # It existed when we started: the store lost it (flushed, or restarted
            # without persistence). That is the infrastructure's failure, not the user's.
            raise BackendError(
                f"run {run_id} vanished from the run store while running "
                "(was it flushed, or restarted without persistence?)"
            ) from exc
        except BackendError:
            # The workers' results wait in their own retries; giving up before the
            # deadline would turn a restart into a crashed CLI and a run nobody follows.
            if time.time() >= run.deadline + outage_grace_s:
                raise
            if timeout is not None and time.monotonic() - started >= timeout:
                return None
            time.sleep(delay)
            delay = min(delay * 2, OUTAGE_MAX_DELAY_S)
            continue
        delay = OUTAGE_FIRST_DELAY_S
        for event_id, event in events:
            last_event = event_id
            kind = event.get("type")
            if kind == "result":
                status = event.get("status", "")
                counts[status] = counts.get(status, 0) + 1
            elif kind == "started":
                started_hosts += 1
            elif kind == "batch":
                batch = _count(event.get("index"), batch)
        if on_progress is not None:
            on_progress(
                Progress(
                    total=len(run.hosts),
                    counts=dict(counts),
                    started=started_hosts,
                    elapsed_s=max(0.0, time.time() - created),
                    batch=batch,
                    batches=len(run.batches),
                )
            )


def _count(text: str | None, default: int) -> int:
    # Events are store data: a malformed one is ignored, never fatal.
    return int(text) if text is not None and text.isdigit() else default


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return time.time()
