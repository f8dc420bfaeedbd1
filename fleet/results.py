"""Result types: what happened on one host (`HostResult`) and in one run (`RunReport`).

All types are frozen, JSON-safe, and convert to and from plain dicts: the same
dicts travel in task results, sit in the run store and make up `--json`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from fleet.decoding import (
    COUNT,
    MAPPING,
    SECONDS,
    TIME,
    Check,
    decode_fields,
    field_checks,
    one_of,
    optional,
)
from fleet.errors import EXIT_HOSTS_FAILED, CorruptRecordError, FleetError


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"  # the command ran and exited non-zero
    TIMEOUT = "timeout"  # the command ran past its wall time
    UNREACHABLE = "unreachable"  # refused, no route, connect or banner timeout
    AUTH_FAILED = "auth_failed"
    HOSTKEY_REJECTED = "hostkey_rejected"
    ERROR = "error"  # anything else that went wrong on the host's side
    CANCELLED = "cancelled"  # not run: the run was cancelled first
    LOST = "lost"  # no result by the run's deadline (a worker died, a message vanished)
    SKIPPED = "skipped"  # not run: an earlier batch crossed the run's --max-fail

    @property
    def is_ok(self) -> bool:
        return self is Status.OK


#: Order in which statuses are listed in reports: the worst news first.
STATUS_ORDER: tuple[Status, ...] = (
    Status.FAILED,
    Status.TIMEOUT,
    Status.UNREACHABLE,
    Status.AUTH_FAILED,
    Status.HOSTKEY_REJECTED,
    Status.ERROR,
    Status.LOST,
    Status.CANCELLED,
    Status.SKIPPED,
    Status.OK,
)


def utc_now() -> str:
    """The current time as an ISO 8601 string in UTC (the format of every timestamp here)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class HostResult:
    """What happened on one host. Host trouble is data here, never an exception."""

    host: str
    status: Status
    address: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_bytes: int = 0  # total bytes the host sent, also beyond the cap
    stderr_bytes: int = 0
    # Bytes kept of each stream, before decoding (None: not known, an older record):
    # replacement-decoded text may be longer than what was kept.
    stdout_kept_bytes: int | None = None
    stderr_kept_bytes: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    error: str | None = None  # in an operator's words: "connection refused"
    worker: str | None = None  # Celery node name that ran it
    connection_reused: bool = False
    remote_kill_confirmed: bool | None = None  # after a timeout: did the remote process end?
    # The signal that ended the command, as RFC 4254 names it ("KILL"); exit_code is None
    exit_signal: str | None = None
    # script, copy, fetch (fleet.transfer): the file that went across, as
    # {"path": str, "bytes": int, "sha256": hex str}; None for a command
    transfer: Mapping[str, Any] | None = field(default=None, hash=False)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def with_worker(self, worker: str | None) -> HostResult:
        return replace(self, worker=worker)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["status"] = self.status.value
        data["transfer"] = dict(self.transfer) if self.transfer is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostResult:
        """Raises `CorruptRecordError` (a `ValueError`) naming a field of the wrong type."""
        return cls(**decode_fields("host result", cls, data, _result_checks()))

    @classmethod
    def not_run(cls, host: str, status: Status, error: str, address: str = "") -> HostResult:
        """A result for a host whose command never produced one (lost, cancelled)."""
        now = utc_now()
        return cls(host=host, status=status, address=address, error=error, finished_at=now)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What was asked: the run's identity, command, selection and options."""

    run_id: str
    command: str
    pattern: str
    hosts: tuple[str, ...]
    created_at: str
    deadline: float  # epoch seconds after which hosts without a result are `lost`
    state: str = "running"  # running | finished | cancelled
    user: str = ""
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    finished_at: str | None = None
    schedule: str | None = None  # the inventory schedule that started it (Celery beat)
    # Rolling runs (fleet.rollout): host names per batch, in order (() = one batch);
    # hosts not ok at which no further batch starts; hosts in flight at most.
    batches: tuple[tuple[str, ...], ...] = ()
    max_fail: int | None = None
    fanout: int | None = None
    # script, copy, fetch: what each host does instead of `command` (fleet.actions)
    action: Mapping[str, Any] | None = field(default=None, hash=False)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["hosts"] = list(self.hosts)
        data["options"] = dict(self.options)
        data["batches"] = [list(names) for names in self.batches]
        data["action"] = dict(self.action) if self.action is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """Raises `CorruptRecordError` (a `ValueError`) naming a field of the wrong type."""
        return cls(**decode_fields("run record", cls, data, _record_checks()))


@functools.cache
def _result_checks() -> dict[str, Check]:
    """What each stored `HostResult` field must hold (`fleet.decoding`)."""
    counts = {f"{s}_bytes": COUNT for s in ("stdout", "stderr")}
    kept = {f"{s}_kept_bytes": optional(COUNT) for s in ("stdout", "stderr")}
    times = {"started_at": optional(TIME), "finished_at": optional(TIME)}
    status = one_of(Status, ", ".join(s.value for s in Status))
    overrides = {"status": status, "duration_s": optional(SECONDS), **counts, **kept, **times}
    overrides["transfer"] = optional(MAPPING)
    return field_checks(HostResult, overrides)


@functools.cache
def _record_checks() -> dict[str, Check]:
    """What each stored `RunRecord` field must hold (`fleet.decoding`)."""
    overrides = {"created_at": TIME, "finished_at": optional(TIME)}
    overrides |= {"max_fail": optional(COUNT), "fanout": optional(COUNT)}
    overrides["action"] = optional(MAPPING)
    return field_checks(RunRecord, overrides)


@dataclass(frozen=True, slots=True)
class OutputGroup:
    """Hosts whose output (stdout, stderr and exit code) was byte-for-byte identical."""

    hosts: tuple[str, ...]
    stdout: str
    stderr: str
    exit_code: int | None


def gather_outputs(results: Iterable[HostResult]) -> tuple[OutputGroup, ...]:
    """Group hosts with identical output, as ClusterShell's clubak does.

    Only hosts whose command ran are gathered. Largest group first, then by first host name.
    """
    buckets: dict[str, list[HostResult]] = {}
    for result in results:
        if result.status not in (Status.OK, Status.FAILED, Status.TIMEOUT):
            continue
        digest = hashlib.blake2b(digest_size=16)
        for part in (result.stdout, "\0", result.stderr, "\0", str(result.exit_code)):
            digest.update(part.encode("utf-8", "surrogatepass"))
        buckets.setdefault(digest.hexdigest(), []).append(result)
    groups = [
        OutputGroup(
            hosts=tuple(sorted(r.host for r in members)),
            stdout=members[0].stdout,
            stderr=members[0].stderr,
            exit_code=members[0].exit_code,
        )
        for members in buckets.values()
    ]
    groups.sort(key=lambda g: (-len(g.hosts), g.hosts[0]))
    return tuple(groups)


@dataclass(frozen=True, slots=True)
class RunReport:
    """A run and every host's result: one result per selected host, always."""

    run: RunRecord
    results: tuple[HostResult, ...]

    @property
    def ok(self) -> tuple[HostResult, ...]:
        return tuple(r for r in self.results if r.status is Status.OK)

    @property
    def failed(self) -> tuple[HostResult, ...]:
        """Every host that did not end `ok`."""
        return tuple(r for r in self.results if r.status is not Status.OK)

    @property
    def is_complete(self) -> bool:
        return len(self.results) == len(self.run.hosts)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.status.value] = counts.get(result.status.value, 0) + 1
        return {s.value: counts[s.value] for s in STATUS_ORDER if s.value in counts}

    def by_status(self) -> dict[Status, tuple[HostResult, ...]]:
        grouped: dict[Status, list[HostResult]] = {}
        for result in self.results:
            grouped.setdefault(result.status, []).append(result)
        return {s: tuple(grouped[s]) for s in STATUS_ORDER if s in grouped}

    def gathered(self) -> tuple[OutputGroup, ...]:
        return gather_outputs(self.results)

    def slowest(self, n: int = 5) -> tuple[HostResult, ...]:
        timed = [r for r in self.results if r.duration_s is not None]
        timed.sort(key=lambda r: r.duration_s or 0.0, reverse=True)
        return tuple(timed[:n])

    def raise_on_error(self) -> None:
        """For library users: raise `HostsFailedError` if any host did not end `ok`."""
        if self.failed:
            raise HostsFailedError(self)

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run.to_dict(), "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """Raises `CorruptRecordError` (a `ValueError`) naming what is malformed."""
        if not isinstance(data, Mapping) or not isinstance(data.get("results"), list):
            raise CorruptRecordError("run report: expected an object with a results list")
        return cls(
            run=RunRecord.from_dict(data.get("run", {})),
            results=tuple(HostResult.from_dict(r) for r in data["results"]),
        )

    @classmethod
    def assemble(cls, run: RunRecord, results: Sequence[HostResult]) -> RunReport:
        """Order results as the run's host list; hosts with no result are left out."""
        by_host = {r.host: r for r in results}
        return cls(run=run, results=tuple(by_host[h] for h in run.hosts if h in by_host))


class HostsFailedError(FleetError):
    """Raised by `RunReport.raise_on_error` (opt-in, for library users)."""

    exit_code = EXIT_HOSTS_FAILED

    def __init__(self, report: RunReport) -> None:
        self.report = report
        names = ", ".join(r.host for r in report.failed[:5])
        more = "" if len(report.failed) <= 5 else f" and {len(report.failed) - 5} more"
        super().__init__(f"{len(report.failed)} host(s) not ok: {names}{more}")
