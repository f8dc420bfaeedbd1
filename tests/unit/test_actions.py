"""Actions as untrusted messages, script interpreters, safe fetch paths, staging."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from fleet.actions import Action, Staged, interpreter_of, safe_component
from fleet.cli_transfer import fetch_target
from fleet.errors import UsageError
from fleet.staging import StagingError, read_staged, stage_file
from fleet.store.sqlite_store import SqliteRunStore

SHA = "a" * 64
SCRIPT = Action(
    "script", Staged("source", 3, SHA), name="s.sh", interpreter=("/bin/sh",), args=("a b",)
)


def test_action_round_trips_through_json() -> None:
    copy = Action("copy", Staged("source", 0, SHA), name="f", dest="/etc/f", mode=0o600)
    fetch = Action("fetch", remote="/etc/hostname")
    for action in (SCRIPT, copy, fetch):
        assert Action.from_message(json.loads(json.dumps(action.to_message()))) == action


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "shell"},
        {"file": None},
        {"file": {"name": "../x", "size": 3, "sha256": SHA}},
        {"file": {"name": "source", "size": -1, "sha256": SHA}},
        {"file": {"name": "source", "size": True, "sha256": SHA}},
        {"file": {"name": "source", "size": 3, "sha256": "zz"}},
        {"name": "a/b"},
        {"name": ".."},
        {"name": "x\0y"},
        {"interpreter": []},
        {"interpreter": ["/bin/sh", "-e", "-x"]},
        {"interpreter": "/bin/sh"},
        {"args": ["ok", 3]},
        {"args": ["nul\0"]},
    ],
)
def test_malformed_script_actions_are_refused(change: dict[str, object]) -> None:
    message = {**SCRIPT.to_message(), **change}
    with pytest.raises(UsageError):
        Action.from_message(message)


@pytest.mark.parametrize(
    "message",
    [
        None,
        [],
        {"kind": "copy", "file": {"name": "source", "size": 1, "sha256": SHA}, "name": "f",
         "dest": "/x", "mode": 0o10000},
        {"kind": "copy", "file": {"name": "source", "size": 1, "sha256": SHA}, "name": "f",
         "dest": "/x", "mode": "0644"},
        {"kind": "copy", "file": {"name": "source", "size": 1, "sha256": SHA}, "name": "f",
         "dest": "line\nbreak", "mode": 0o644},
        {"kind": "fetch", "remote": "/"},
        {"kind": "fetch", "remote": ""},
        {"kind": "fetch", "remote": 7},
    ],
)  # fmt: skip
def test_malformed_copy_and_fetch_actions_are_refused(message: object) -> None:
    with pytest.raises(UsageError):
        Action.from_message(message)


def test_interpreter_from_the_shebang() -> None:
    assert interpreter_of(b"#!/bin/bash\necho") == ("/bin/bash",)
    assert interpreter_of(b"#!/usr/bin/env python3\n") == ("/usr/bin/env", "python3")
    assert interpreter_of(b"#! /bin/sh -e -x\n") == ("/bin/sh", "-e -x")
    assert interpreter_of(b"echo hi\n") == ("/bin/sh",)
    assert interpreter_of(b"#!\n") == ("/bin/sh",)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("web01.example.com", "web01.example.com"),
        ("..", "%2E."),
        (".", "%2E"),
        ("../../x", "%2E.%2F..%2Fx"),
        ("a/b", "a%2Fb"),
        ("nul\0", "nul%00"),
        ("100%", "100%25"),
        ("", "%"),
        ("é", "%C3%A9"),
    ],
)
def test_safe_component(name: str, safe: str) -> None:
    assert safe_component(name) == safe
    assert "/" not in safe and safe not in (".", "..")


def test_fetch_target_stays_inside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for host in ("../../x", "a/b", "..", "/etc", "h\0"):
        target = fetch_target(out, host, "../passwd")
        assert target.parent.parent == out.resolve()
    # A HOST directory that is a symlink out of LOCALDIR is refused.
    (out / "evil").symlink_to(tmp_path)
    with pytest.raises(UsageError):
        fetch_target(out, "evil", "hostname")


def test_staging_round_trip_and_tamper(tmp_path: Path) -> None:
    store = SqliteRunStore(tmp_path / "h.sqlite3")
    source = tmp_path / "src"
    source.write_bytes(b"x" * (2 * 1024 * 1024 + 5))
    staged = stage_file(store, "r1", "source", source, 60)
    sink = io.BytesIO()
    read_staged(store, "r1", staged, sink)
    assert sink.getvalue() == source.read_bytes()
    store.blob_put_chunk("r1", "source", 2, b"y" * 5, 60)  # tampered last chunk
    with pytest.raises(StagingError):
        read_staged(store, "r1", staged, io.BytesIO())
    store.blob_delete("r1")
    with pytest.raises(StagingError):
        read_staged(store, "r1", staged, io.BytesIO())
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    staged = stage_file(store, "r2", "source", empty, 60)
    sink = io.BytesIO()
    read_staged(store, "r2", staged, sink)
    assert staged.size == 0 and sink.getvalue() == b""


def test_a_fetched_file_not_written_leaves_no_empty_host_directory(tmp_path: Path) -> None:
    from fleet.cli_transfer import write_fetched
    from fleet.results import HostResult, RunRecord, RunReport, Status, utc_now
    from fleet.staging import fetched_name

    store = SqliteRunStore(tmp_path / "h.sqlite3")
    source = tmp_path / "src"
    source.write_bytes(b"hello\n")
    staged = stage_file(store, "r1", fetched_name("web01"), source, 60)
    transfer = {"path": "/etc/motd", "bytes": staged.size, "sha256": staged.sha256}
    results = [
        HostResult("web01", Status.OK, exit_code=0, transfer=transfer),
        # Its staged file is gone (expired): the write fails for this host only.
        HostResult("web02", Status.OK, exit_code=0, transfer=transfer),
    ]
    run = RunRecord("r1", "fetch", "web", ("web01", "web02"), utc_now(), 0.0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "web03").mkdir()  # there before: not fleet's to remove
    written, problems = write_fetched(store, "r1", RunReport.assemble(run, results), out, "motd")
    assert written == 1 and (out / "web01" / "motd").read_bytes() == b"hello\n"
    assert len(problems) == 1 and problems[0].startswith("web02: fetched file not written")
    assert sorted(p.name for p in out.iterdir()) == ["web01", "web03"]  # no empty web02/
    store.close()
