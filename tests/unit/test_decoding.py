"""Records read back from the store are checked field by field (issue 10 point 5), and
stored output is compact (issue 10 point 6): `fleet.decoding`, the `from_dict` decoders,
`fleet.store.codec`, the stores' handling of an unreadable result, and the inventory's
size limit."""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from fleet.command import CappedBuffer
from fleet.errors import CorruptRecordError, InventoryError
from fleet.inventory.loader import parse_inventory
from fleet.results import (
    HostResult,
    RunRecord,
    RunReport,
    Status,
    _record_checks,
    _result_checks,
    utc_now,
)
from fleet.store import codec
from fleet.store.protocol import UNREADABLE_RESULT
from fleet.store.sqlite_store import SqliteRunStore
from tests.unit.test_results import full_result, record

ESC = "\x1b]52;c;ZWNobyBwd25lZA==\x07"

# --- every field's bad type ------------------------------------------------------------

BAD_RESULT_VALUES: list[tuple[str, Any]] = [
    ("host", 5),
    ("host", None),
    ("status", "exploded"),
    ("status", 1),
    ("status", ESC),
    ("address", ["x"]),
    ("exit_code", "<script>alert(1)</script>"),
    ("exit_code", ESC),
    ("exit_code", True),
    ("exit_code", 1.5),
    ("stdout", 5),
    ("stderr", {"a": 1}),
    ("stdout_truncated", "yes"),
    ("stderr_truncated", 0),
    ("stdout_bytes", -1),
    ("stderr_bytes", "12"),
    ("stdout_kept_bytes", -3),
    ("stderr_kept_bytes", 1.0),
    ("started_at", "yesterday"),
    ("finished_at", 1700000000),
    ("finished_at", "2024-01-01T10:00:00" + "0" * 100),
    ("duration_s", -1.0),
    ("duration_s", "2"),
    ("duration_s", float("nan")),
    ("error", 7),
    ("worker", ["w"]),
    ("connection_reused", "true"),
    ("remote_kill_confirmed", 1),
    ("exit_signal", 9),
    ("transfer", ["x"]),
]


@pytest.mark.parametrize(("name", "value"), BAD_RESULT_VALUES)
def test_a_host_result_field_of_the_wrong_type_is_refused_by_name(name: str, value: Any) -> None:
    data = full_result().to_dict() | {name: value}
    with pytest.raises(CorruptRecordError, match=f"host result: {name}: expected") as info:
        HostResult.from_dict(data)
    assert isinstance(info.value, ValueError)  # what listing and the watchdog skip
    assert "\x1b" not in str(info.value) and "\x07" not in str(info.value)


def test_every_host_result_field_is_covered_and_required_ones_are_missing_by_name() -> None:
    assert {name for name, _ in BAD_RESULT_VALUES} == {f.name for f in fields(HostResult)}
    assert set(_result_checks()) == {f.name for f in fields(HostResult)}
    with pytest.raises(CorruptRecordError, match="host result: status: missing"):
        HostResult.from_dict({"host": "h"})
    with pytest.raises(CorruptRecordError, match="expected a JSON object"):
        HostResult.from_dict([1, 2])  # type: ignore[arg-type]


def test_good_values_still_decode() -> None:
    data = HostResult("h", Status.FAILED, exit_code=-15, duration_s=0).to_dict()
    result = HostResult.from_dict(json.loads(json.dumps(data)))
    assert result.exit_code == -15 and result.duration_s == 0.0
    assert result.status is Status.FAILED


BAD_RECORD_VALUES: list[tuple[str, Any]] = [
    ("run_id", 5),
    ("command", None),
    ("pattern", ["web"]),
    ("hosts", "\x1b[2J"),
    ("hosts", ["web01", 7]),
    ("created_at", "not a time"),
    ("deadline", "soon"),
    ("deadline", True),
    ("state", 1),
    ("user", {"name": "x"}),
    ("options", ["x"]),
    ("finished_at", "<script>"),
    ("schedule", 3),
]


@pytest.mark.parametrize(("name", "value"), BAD_RECORD_VALUES)
def test_a_run_record_field_of_the_wrong_type_is_refused_by_name(name: str, value: Any) -> None:
    data = record().to_dict() | {name: value}
    with pytest.raises(CorruptRecordError, match=f"run record: {name}: expected"):
        RunRecord.from_dict(data)


def test_every_run_record_field_has_a_check() -> None:
    assert set(_record_checks()) == {f.name for f in fields(RunRecord)}


def test_a_report_with_a_bad_result_list_is_refused() -> None:
    with pytest.raises(CorruptRecordError, match="results list"):
        RunReport.from_dict({"run": record().to_dict(), "results": "x"})
    with pytest.raises(CorruptRecordError, match="run record: run_id: missing"):
        RunReport.from_dict({"results": []})


# --- compact stored output -------------------------------------------------------------


def replaced(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"hello\n",
        "caf\u00e9 \u2603\n".encode(),
        b"\xff" * 1000,
        b"ok\xe2\x82 cut\xc3",  # truncated sequences: one U+FFFD each
        "\ufffd is real".encode() + b"\xfe",
        b"\x01\x1b[2J" * 300,  # valid but escape-heavy: JSON would write 6 bytes each
        os.urandom(5000),
    ],
)
def test_stored_streams_round_trip_to_the_text_shown(raw: bytes) -> None:
    result = HostResult("h", Status.OK, stdout=replaced(raw), stderr=replaced(raw[::-1]))
    stored = codec.result_json(result)
    assert codec.result_from_json(stored) == result
    assert codec.result_from_json(stored.encode()) == result  # as Redis answers: bytes
    # Never much more than the bytes kept, whatever the host printed.
    assert len(stored.encode()) <= 4 * (2 * len(raw)) // 3 + 1000


def test_invalid_utf8_is_stored_as_base64_of_at_most_the_kept_bytes() -> None:
    buffer = CappedBuffer(1 << 20)
    buffer.feed(b"\xff" * 2_000_000)
    result = HostResult("h", Status.OK, stdout=buffer.text(), stdout_kept_bytes=buffer.kept)
    data = json.loads(codec.result_json(result))
    assert "stdout" not in data
    assert len(base64.b64decode(data["stdout_b64"])) == 1 << 20
    assert len(codec.result_json(result)) < 1.4 * (1 << 20)
    assert codec.result_from_json(codec.result_json(result)).stdout == "\ufffd" * (1 << 20)


def test_valid_text_is_stored_as_utf8_not_escapes() -> None:
    result = HostResult("h", Status.OK, stdout="caf\u00e9\n" * 1000)
    stored = codec.result_json(result)
    assert "caf\u00e9" in stored and "\\u00e9" not in stored
    assert json.loads(stored)["stdout"] == result.stdout


def test_a_lone_surrogate_is_still_stored() -> None:
    result = full_result()  # its stdout ends with a lone surrogate
    assert codec.result_from_json(codec.result_json(result)) == result


@pytest.mark.parametrize(
    ("stored", "match"),
    [
        ("{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ('{"host": "h", "status": "ok", "stdout_b64": "!!"}', "stdout_b64: not base64"),
        ('{"host": "h", "status": "ok", "stderr_b64": 5}', "stderr_b64: expected base64"),
        ('{"host": "h", "status": "ok", "exit_code": "<b>"}', "exit_code: expected"),
    ],
)
def test_a_malformed_stored_result_is_refused(stored: str | bytes, match: str) -> None:
    with pytest.raises(CorruptRecordError, match=match):
        codec.result_from_json(stored)


# --- stores: an unreadable result is marked, the others shown --------------------------


def test_an_unreadable_result_is_marked_error_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteRunStore(tmp_path / "h.sqlite3")
    run = record(hosts=("web01", "web02", "web03"))
    store.create_run(run, ())
    for host in run.hosts:
        store.save_result(run.run_id, HostResult(host, Status.OK, exit_code=0, stdout="fine"))
    tampered = {
        "web01": json.dumps({"host": "web01", "status": "ok", "exit_code": "<script>x</script>"}),
        "web02": json.dumps({"host": "web03", "status": "ok"}),  # filed under another host
    }
    with store._conn:
        for host, data in tampered.items():
            store._conn.execute("UPDATE results SET data = ? WHERE host = ?", (data, host))
    with caplog.at_level(logging.WARNING):
        results = store.results(run.run_id)
    assert results["web03"].stdout == "fine"
    for host in ("web01", "web02"):
        assert results[host].status is Status.ERROR
        assert (results[host].error or "").startswith(UNREADABLE_RESULT)
        assert results[host].exit_code is None
    assert any("web01" in r.getMessage() for r in caplog.records)


def test_the_report_is_stored_once_as_a_summary(tmp_path: Path) -> None:
    store = SqliteRunStore(tmp_path / "h.sqlite3")
    run = record(hosts=("web01",), created_at=utc_now())
    store.create_run(run, ())
    result = HostResult("web01", Status.OK, exit_code=0, stdout="x" * 10_000)
    store.save_result(run.run_id, result)
    store.save_report(RunReport.assemble(run, [result]))
    row = store._conn.execute("SELECT report FROM runs").fetchone()
    assert len(row[0]) < 200 and json.loads(row[0])["counts"] == {"ok": 1}
    report = store.load_report(run.run_id)
    assert report is not None and report.results == (result,)


# --- the inventory's resolved size -----------------------------------------------------


def amplifying(hosts: int, size: int) -> str:
    names = "\n".join(f"      h{i}: {{}}" for i in range(hosts))
    return f"defaults:\n  blob: {'x' * size}\ngroups:\n  all_of_them:\n    hosts:\n{names}\n"


def test_an_amplifying_inventory_is_refused_naming_the_key_path() -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(amplifying(300, 1 << 20), "big.yaml")
    message = str(info.value)
    assert message.startswith("big.yaml: defaults.blob: the hosts would carry")
    assert "limit 8388608" in message and len(message.splitlines()) == 1


def test_the_size_limit_counts_what_is_carried_and_can_be_changed() -> None:
    text = amplifying(10, 1000)
    assert len(parse_inventory(text, "x").hosts) == 10
    with pytest.raises(InventoryError, match=r"defaults\.blob"):
        parse_inventory(text, "x", max_bytes=5000)
    assert parse_inventory(text, "x", max_bytes=0).hosts  # 0: no limit
    # A value overridden on a host is not carried by it: the override is what weighs.
    shadowed = text.replace("h0: {}", f"h0: {{blob: {'y' * 20000}}}")
    with pytest.raises(InventoryError, match=r"groups\.all_of_them\.hosts\.h0\.blob"):
        parse_inventory(shadowed, "x", max_bytes=25000)
