"""fleet.audit: the entry and its checks, --since, the identity; the SQLite audit log;
a submit refused when its entry cannot be written; a cancel's entry; `fleet audit`'s
table and its bad --since."""

from __future__ import annotations

import json
import logging
import os
import pwd
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleet import audit
from fleet.audit import CANCEL, MASK, SUBMIT, AuditEntry, decode_entries, parse_since
from fleet.cli import main
from fleet.cli_audit import render_audit
from fleet.command import ExecOptions
from fleet.errors import BackendError, UsageError
from fleet.lifecycle import RunRequest
from fleet.results import RunRecord, utc_now
from fleet.runs import submit_run
from fleet.session import RunSession
from fleet.settings import Settings
from fleet.store.sqlite_store import SqliteRunStore
from tests.store_contract import make_hosts, make_run


def entry(**changes: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "when": utc_now(),
        "action": SUBMIT,
        "who": "ops@box",
        "run_id": "20250131-120000-3fa9c2",
        "command": "uptime",
        "pattern": "web",
        "host_count": 3,
        "options": {"command_timeout": 30.0, "env": {"TOKEN": "s3cret"}},
    }
    return AuditEntry(**(values | changes))


# --- the entry -------------------------------------------------------------------------


def test_round_trip_through_json() -> None:
    for e in (entry(), entry(action=CANCEL, signer="CN=deploy", schedule="nightly")):
        assert AuditEntry.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def test_env_values_never_in_an_entry() -> None:
    e = entry()
    assert e.options["env"] == {"TOKEN": MASK}
    assert "s3cret" not in json.dumps(e.to_dict())
    # Also when read back from a record that carries one (written by something else).
    raw = entry().to_dict() | {"options": {"env": {"TOKEN": "s3cret"}}}
    assert AuditEntry.from_dict(raw).options["env"] == {"TOKEN": MASK}


def test_for_run_takes_the_run_and_counts_hosts() -> None:
    hosts = make_hosts("a", "b")
    run = make_run("r1", hosts)
    e = AuditEntry.for_run(CANCEL, run, who="me@here", signer="CN=x")
    assert (e.action, e.run_id, e.host_count, e.command, e.pattern) == (
        CANCEL, "r1", 2, "uptime", "web",
    )  # fmt: skip
    assert (
        e.who == "me@here" and e.signer == "CN=x" and e.epoch == pytest.approx(time.time(), abs=5)
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"when": "yesterday"}, "when"),
        ({"when": "2025-01-31T12:00:00"}, "when"),  # no offset
        ({"when": 5}, "when"),
        ({"action": "delete"}, "action"),
        ({"who": None}, "who"),
        ({"run_id": ["x"]}, "run_id"),
        ({"command": {"a": 1}}, "command"),
        ({"host_count": "3"}, "host_count"),
        ({"host_count": True}, "host_count"),
        ({"host_count": -1}, "host_count"),
        ({"signer": 7}, "signer"),
        ({"schedule": []}, "schedule"),
        ({"options": []}, "options"),
        ({"options": {"a": {"b": {"c": {"d": {"e": 1}}}}}}, "options"),
    ],
)
def test_from_dict_refuses_bad_types(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AuditEntry.from_dict(entry().to_dict() | change)


def test_from_dict_refuses_a_non_object_and_ignores_unknown_keys() -> None:
    with pytest.raises(ValueError):
        AuditEntry.from_dict(["x"])
    e = entry()
    assert AuditEntry.from_dict(e.to_dict() | {"added_later": 1}) == e


def test_decode_entries_skips_bad_ones_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    good = json.dumps(entry().to_dict())
    items = [("1-0", good), ("2-0", "{not json"), ("3-0\x1b[2J", '{"when": 5}'), ("4-0", good)]
    with caplog.at_level(logging.WARNING, logger="fleet.audit"):
        decoded = decode_entries(items)
    assert len(decoded) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "2-0" in messages[0] and "unreadable" in messages[0]
    assert "\x1b" not in messages[1] and "\\x1b" in messages[1]


# --- --since and who -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ago"), [("30m", 1800), ("12h", 43200), ("1d", 86400), ("1h30m", 5400), ("90s", 90)]
)
def test_since_durations(text: str, ago: float) -> None:
    assert parse_since(text, 10_000_000.0) == 10_000_000.0 - ago


def test_since_iso_times() -> None:
    assert parse_since("2025-01-31T12:00", 0) == datetime(2025, 1, 31, 12, tzinfo=UTC).timestamp()
    offset = datetime(2025, 1, 31, 12, tzinfo=UTC) - timedelta(hours=2)
    assert parse_since("2025-01-31T12:00+02:00", 0) == offset.timestamp()
    assert parse_since("2025-01-31", 0) == datetime(2025, 1, 31, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("text", ["", "1x", "-1d", "0m", "yesterday", "2025-13-01", "\x1b[2J"])
def test_since_refuses_anything_else_in_one_line(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_since(text, time.time())
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_who_is_the_os_account_not_user_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    account = pwd.getpwuid(os.getuid()).pw_name
    assert audit.os_account() == account
    assert audit.who() == f"{account}@{os.uname().nodename}"
    assert audit.run_user("ops@box", None) == "ops@box"
    assert audit.run_user("ops@box", "CN=deploy") == "CN=deploy (ops@box)"


# --- the SQLite audit log --------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRunStore]:
    s = SqliteRunStore(tmp_path / "history.sqlite3")
    yield s
    s.close()


def at(seconds_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat()


def test_sqlite_newest_first_since_and_limit(store: SqliteRunStore) -> None:
    assert store.audit_entries() == []
    for i, ago in enumerate((7200, 3600, 60)):
        store.append_audit(entry(run_id=f"r{i}", when=at(ago)))
    assert [e.run_id for e in store.audit_entries()] == ["r2", "r1", "r0"]
    assert [e.run_id for e in store.audit_entries(limit=2)] == ["r2", "r1"]
    assert [e.run_id for e in store.audit_entries(since=time.time() - 5400)] == ["r2", "r1"]
    assert store.audit_entries(limit=0) == []


def test_sqlite_audit_outlives_runs_and_keeps_its_own_retention(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    store = SqliteRunStore(path, retention=60, audit_retention=3 * 86400)
    hosts = make_hosts("web01")
    store.create_run(make_run("old", hosts, created_at=at(3600)), hosts)
    store.append_audit(entry(run_id="old", when=at(3600)))
    store.append_audit(entry(run_id="ancient", when=at(4 * 86400)))
    store.create_run(make_run("new", hosts), hosts)  # purges the run "old"
    assert [r.run_id for r in store.list_runs()] == ["new"]
    assert [e.run_id for e in store.audit_entries()] == ["old"]  # "ancient": past retention
    store.close()
    again = SqliteRunStore(path, retention=60, audit_retention=3 * 86400)
    try:
        assert [e.run_id for e in again.audit_entries()] == ["old"]
    finally:
        again.close()


def test_sqlite_tampered_row_is_skipped(
    tmp_path: Path, store: SqliteRunStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.append_audit(entry(run_id="a"))
    store.append_audit(entry(run_id="b"))
    conn = sqlite3.connect(tmp_path / "history.sqlite3")
    conn.execute('UPDATE audit SET data = \'{"host_count": "x"}\' WHERE id = 1')
    conn.execute("INSERT INTO audit (at, data) VALUES (?, ?)", (time.time(), 42))
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="fleet.audit"):
        assert [e.run_id for e in store.audit_entries()] == ["b"]
    assert len(caplog.records) == 2


# --- submit and cancel write their entries ---------------------------------------------


class NoAudit(SqliteRunStore):
    def append_audit(self, entry: AuditEntry) -> None:
        raise BackendError("audit store down")


def request() -> RunRequest:
    options = ExecOptions(env={"TOKEN": "s3cret"})
    return RunRequest("uptime", "web", make_hosts("web01", "web02"), options)


def test_a_submit_whose_entry_cannot_be_written_records_and_publishes_nothing(
    tmp_path: Path,
) -> None:
    store = NoAudit(tmp_path / "h.sqlite3")
    settings = Settings.load(env={"FLEET_HOME": str(tmp_path)})
    try:
        with pytest.raises(BackendError, match=r"audit log not written.*not submitted"):
            submit_run(store, request(), settings=settings, deadline_s=60, run_id="r1")
        assert store.list_runs() == []
    finally:
        store.close()


def test_a_cancel_appends_one_entry_only_when_it_cancelled(store: SqliteRunStore) -> None:
    hosts = make_hosts("web01", "web02")
    run = RunRecord(**(make_run("r1", hosts).to_dict() | {"options": request().options.to_dict()}))
    store.create_run(run, hosts)
    session = RunSession(Settings.load(env={}), store=store)
    assert session.cancel("r1") is True
    assert session.cancel("r1") is False  # already cancelled: nothing appended
    [cancel] = store.audit_entries()
    assert (cancel.action, cancel.run_id, cancel.host_count) == (CANCEL, "r1", 2)
    assert cancel.who == audit.who() and cancel.signer is None
    assert cancel.options["env"] == {"TOKEN": MASK}


# --- fleet audit -----------------------------------------------------------------------


def test_table_shows_fields_made_visible() -> None:
    text = render_audit(
        [entry(command="echo \x1b]52;c;aGk=\x07 hi", who="ops@box\n2025 forged"), entry()]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "WHO", "ACTION", "RUN", "ID", "HOSTS", "COMMAND"]
    assert len(lines) == 3 and "\x1b" not in text and "\\x1b]52" in text and "\\n2025" in text
    assert render_audit([]) == "no audit entries\n"


def test_bad_since_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--since", "lately"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fleet: --since 'lately'")
