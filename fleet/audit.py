"""The audit log: who submitted or cancelled which run, when, and with what.

One `AuditEntry` is appended for every submit (``fleet run``, `fleet.run`, each Celery
beat firing: all go through `fleet.runs.submit_run`) and for every cancel that actually
cancelled a run (`fleet.session.RunSession.cancel`). The log is append-only and kept
apart from the run history, with its own retention (``FLEET_AUDIT_RETENTION``, seconds,
default 90 days): a Redis Stream ``{prefix}:audit`` (`fleet.store.redis_audit`), or a
table in the embedded history (`fleet.store.sqlite_audit`).

A submit whose entry cannot be written is refused before anything is recorded or
published (`BackendError`): the audit is the record of who ran what, so no run exists
without its entry. A submit entry may still name a run that then failed: one the store
could not record (it does not exist), or one that failed to publish (fleet cancels it
and appends a ``cancel`` entry for it).

Entries hold no secret values: the options' ``env`` keeps its names, every value is
``***`` (`redact_options`, applied whenever an entry is made). Entries read back from
the store are untrusted: `AuditEntry.from_dict` type-checks every field and
`decode_entries` skips (with a warning naming it) one it cannot read.

Framework-free: no Celery, Redis or paramiko here.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from fleet.errors import UsageError
from fleet.inventory.values import seconds
from fleet.results import RunRecord, utc_now
from fleet.textsafe import make_visible_line

SUBMIT = "submit"
CANCEL = "cancel"
ACTIONS = (SUBMIT, CANCEL)
#: What an environment value is replaced with in an entry.
MASK = "***"
#: How deep an option value may nest (``env`` is a mapping of strings: depth 2).
_MAX_DEPTH = 4

_log = logging.getLogger("fleet.audit")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One submit or cancel.

    `when`: ISO 8601 time in UTC; `action`: ``submit`` or ``cancel``; `who`: the OS
    account and machine (``user@node``, from the password database, not ``$USER``);
    `signer`: the message-signing identity of the submitter, or None when signing is
    off; `host_count`: how many hosts the run selected; `schedule`: the inventory
    schedule for a Celery beat firing; `options`: the run's options with every
    environment value ``***``.
    """

    when: str
    action: str
    who: str
    run_id: str
    command: str
    pattern: str
    host_count: int
    signer: str | None = None
    schedule: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Whatever the caller passed, an entry never holds an environment value.
        object.__setattr__(self, "options", MappingProxyType(redact_options(self.options)))

    @classmethod
    def for_run(
        cls,
        action: str,
        run: RunRecord,
        *,
        who: str,
        signer: str | None = None,
        when: str | None = None,
    ) -> AuditEntry:
        """The entry of `action` on `run`, now unless `when` is given."""
        return cls(
            when=when or utc_now(),
            action=action,
            who=who,
            run_id=run.run_id,
            command=run.command,
            pattern=run.pattern,
            host_count=len(run.hosts),
            signer=signer,
            schedule=run.schedule,
            # What shapes the run besides the command: its rollout and deadline too.
            options={
                **run.options,
                "batches": len(run.batches) or None,
                "max_fail": run.max_fail,
                "fanout": run.fanout,
                "deadline": run.deadline,
            },
        )

    @property
    def epoch(self) -> float:
        """`when` in epoch seconds (the score of retention and ``--since``)."""
        return datetime.fromisoformat(self.when).timestamp()

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["options"] = json.loads(json.dumps(dict(self.options), default=str))
        return data

    @classmethod
    def from_dict(cls, data: Any) -> AuditEntry:
        """An entry from its `to_dict` form, every field type-checked (keys it does not
        know are ignored: fields are only ever added). Raises `ValueError` naming the
        first bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        values: dict[str, Any] = {}
        for name in ("when", "action", "who", "run_id", "command", "pattern"):
            values[name] = _field(data, name, str)
        for name in ("signer", "schedule"):
            value = data.get(name)
            values[name] = None if value is None else _field(data, name, str)
        count = data.get("host_count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"host_count: expected a whole number >= 0, got {_kind(count)}")
        values["host_count"] = count
        if values["action"] not in ACTIONS:
            raise ValueError(f"action: expected one of {', '.join(ACTIONS)}")
        try:
            when = datetime.fromisoformat(values["when"])
        except ValueError:
            raise ValueError("when: expected an ISO 8601 time") from None
        if when.tzinfo is None:
            raise ValueError("when: expected a time with its UTC offset")
        options = data.get("options", {})
        if not isinstance(options, Mapping) or not _is_json_value(options, _MAX_DEPTH):
            raise ValueError("options: expected an object of JSON values")
        values["options"] = options
        return cls(**values)


def _field(data: Mapping[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        raise ValueError(f"{name}: expected {kind.__name__}, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _is_json_value(value: Any, depth: int) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if depth <= 0:
        return False
    if isinstance(value, list):
        return all(_is_json_value(v, depth - 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json_value(v, depth - 1) for k, v in value.items())
    return False


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` with every environment value replaced by ``***`` (the names are kept:
    they say what was set, not to what)."""
    out = dict(options)
    env = out.get("env")
    if isinstance(env, Mapping):
        out["env"] = {str(name): MASK for name in env}
    return out


def decode_entries(items: Iterable[tuple[str, str | bytes]]) -> list[AuditEntry]:
    """Entries from ``(entry id, JSON text)`` pairs as a store read them, in order.

    One that is not JSON or fails `AuditEntry.from_dict` is skipped with a warning
    naming its id: a tampered entry must not hide the others, nor crash the reader.
    """
    entries: list[AuditEntry] = []
    for entry_id, text in items:
        try:
            entries.append(AuditEntry.from_dict(json.loads(text)))
        except (ValueError, TypeError, RecursionError) as exc:
            _log.warning(
                "audit entry %s is unreadable, skipped (%s)",
                make_visible_line(entry_id),
                make_visible_line(f"{type(exc).__name__}: {exc}")[:200],
            )
    return entries


def os_account() -> str:
    """The account this process runs as: the password database's name for its real uid
    (``$USER`` and ``$LOGNAME``, which anyone can set, are not asked); ``uid N`` when
    the uid has no entry (a container's arbitrary uid)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def node() -> str:
    """This machine's network node name (``uname -n``), or ``unknown``."""
    try:
        return os.uname().nodename or "unknown"
    except OSError:
        return "unknown"


def who() -> str:
    """``account@node`` of this process (`os_account`, `node`)."""
    return f"{os_account()}@{node()}"


def run_user(who: str, signer: str | None) -> str:
    """The run record's ``user``: `who`, led by the signing identity when there is one
    (``CN=deploy (ops@box)``)."""
    return f"{signer} ({who})" if signer else who


def parse_since(text: str, now: float) -> float:
    """Epoch seconds from ``--since``: a duration before `now` (``30m``, ``12h``, ``1d``,
    ``1h30m``, ``90s``) or an ISO 8601 time (``2025-01-31``, ``2025-01-31T12:00``; UTC
    unless it carries an offset). Raises `UsageError` with one line for anything else."""
    span = seconds(text)
    if span is not None:
        return now - span
    try:
        when = datetime.fromisoformat(text.strip())
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (ValueError, OverflowError):
        raise UsageError(
            f"--since {make_visible_line(text)!r}: expected a duration (30m, 12h, 1d) "
            "or an ISO time (2025-01-31T12:00)"
        ) from None
