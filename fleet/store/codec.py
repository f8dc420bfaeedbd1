"""How a `HostResult` is written in the run store, compactly, and read back, checked.

A host decides what it prints, and JSON with ``ensure_ascii`` writes each byte of
invalid UTF-8 (replaced by U+FFFD) as a six-byte ``\\ufffd`` escape: 1 MiB kept became
6 MiB stored. Here each stream is written in whichever of two forms is smaller:

- ``"stdout": TEXT``: the text itself, in a JSON document written with
  ``ensure_ascii=False`` (UTF-8 in the store), for ordinary output;
- ``"stdout_b64": BASE64``: base64 of the text's bytes, for output that was not valid
  UTF-8 or is full of control characters (JSON escapes those too). The bytes are the
  text's UTF-8 with every U+FFFD written as the one byte 0xff (never valid in UTF-8), so
  decoding them with replacement gives back exactly the text the report shows, and
  they are never longer than the bytes kept from the host.

Either way a stream takes at most about 4/3 of the bytes kept (`ExecOptions.output_cap`).
Reading accepts both forms (and records written before this one) and checks every
field (`HostResult.from_dict`); anything malformed raises `CorruptRecordError`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fleet.errors import CorruptRecordError
from fleet.results import HostResult, RunReport
from fleet.textsafe import show_value

STREAMS = ("stdout", "stderr")
_REPLACEMENT = "\ufffd".encode()
_B64 = "_b64"


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def compact_bytes(text: str) -> bytes:
    """`text`'s UTF-8 with each U+FFFD as the single byte 0xff: decoding it with
    ``errors="replace"`` gives `text` back. `text` must hold no lone surrogate."""
    return text.encode("utf-8").replace(_REPLACEMENT, b"\xff")


def _stream_fields(name: str, text: str) -> dict[str, str]:
    if not text or _has_surrogates(text):
        return {name: text}  # a lone surrogate can only be kept as (escaped) text
    as_text = len(json.dumps(text, ensure_ascii=False).encode("utf-8"))
    raw = compact_bytes(text)
    if 4 * ((len(raw) + 2) // 3) + len(_B64) < as_text:
        return {name + _B64: base64.b64encode(raw).decode("ascii")}
    return {name: text}


def result_json(result: HostResult) -> str:
    """`result` as stored: one JSON document, each stream in its smaller form."""
    data: dict[str, Any] = result.to_dict()
    for name in STREAMS:
        data.update(_stream_fields(name, data.pop(name)))
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if _has_surrogates(text):  # a lone surrogate somewhere: only escapes can carry it
        text = json.dumps(data, separators=(",", ":"))
    return text


def result_from_json(text: str | bytes) -> HostResult:
    """A stored result, decoded and checked. Raises `CorruptRecordError` (a `ValueError`)
    naming what is wrong: not JSON, a stream that is not base64, a field of the wrong type."""
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise CorruptRecordError(f"host result: not JSON ({exc})") from None
    if isinstance(data, dict):
        for name in STREAMS:
            packed = data.pop(name + _B64, None)
            if packed is None:
                continue
            if not isinstance(packed, str):
                raise CorruptRecordError(
                    f"host result: {name}{_B64}: expected base64 text, got {show_value(packed)}"
                )
            try:
                raw = base64.b64decode(packed, validate=True)
            except (binascii.Error, ValueError):
                raise CorruptRecordError(f"host result: {name}{_B64}: not base64") from None
            data[name] = raw.decode("utf-8", errors="replace")
    return HostResult.from_dict(data)


def summary_json(report: RunReport) -> str:
    """What `save_report` stores: the run-level summary only (counts by status, host
    count, end time); the report itself is assembled from the stored results."""
    summary = {
        "counts": report.counts(),
        "hosts_total": len(report.run.hosts),
        "finished_at": report.run.finished_at,
    }
    return json.dumps(summary, separators=(",", ":"), ensure_ascii=False)
