"""A command ended by a signal says which (issue 11 point 8): ``exit_signal`` in the
result and the JSON contract, "killed by signal KILL" as the error; locally from the
negative returncode, over SSH from sshd's "exit-signal" request (RFC 4254 section 6.10),
which paramiko ignores (tests/integration/test_exit_signal.py runs it against sshd)."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import paramiko
import pytest
from paramiko.common import MSG_CHANNEL_REQUEST
from paramiko.message import Message

from fleet.command import CappedBuffer, Clock, ExecOptions, signal_label
from fleet.inventory.hosts import Host
from fleet.local import run_local
from fleet.report import render_json
from fleet.results import HostResult, RunRecord, RunReport, Status
from fleet.ssh import command as ssh_command

LOCAL = Host(name="localhost", address="localhost", connection="local")


@pytest.mark.parametrize(
    ("sent", "shown"),
    [("KILL", "KILL"), ("SIGTERM", "TERM"), ("XCPU@openssh.com", "XCPU@openssh.com"),
     ("\x1b[31mred", "?"), ("", "?"), ("A" * 200, "?")],
)  # fmt: skip
def test_signal_label(sent: str, shown: str) -> None:
    assert signal_label(sent) == shown


@pytest.mark.parametrize("sig", ["KILL", "TERM"])
def test_local_command_killed_by_a_signal(sig: str) -> None:
    r = run_local(LOCAL, f"echo before; kill -{sig} $$; echo after", ExecOptions())
    assert (r.status, r.exit_code, r.exit_signal) == (Status.FAILED, None, sig)
    assert r.error == f"killed by signal {sig}" and r.stdout == "before\n"
    assert HostResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_a_child_killed_inside_the_command_is_an_exit_code() -> None:
    # The shell itself exits (137): that is its own exit status, not a signal.
    r = run_local(LOCAL, "sleep 5 & kill -KILL $!; wait $!", ExecOptions())
    assert (r.exit_code, r.exit_signal) == (137, None)


def test_result_and_contract_carry_exit_signal() -> None:
    clock = Clock()
    r = clock.finished(
        LOCAL, exit_code=None, stdout=CappedBuffer(10), stderr=CappedBuffer(10),
        timed_out=False, timeout=5, exit_signal="KILL",
    )  # fmt: skip
    assert (r.status, r.error, r.exit_signal) == (Status.FAILED, "killed by signal KILL", "KILL")
    run = RunRecord("r1", "cmd", "all", ("localhost",), r.finished_at or "", 0.0)
    doc = json.loads(render_json(RunReport.assemble(run, [r])))
    assert doc["results"][0]["exit_signal"] == "KILL"
    assert doc["results"][0]["exit_code"] is None


def _request(kind: str, *fields: Any) -> Message:
    m = Message()
    m.add_string(kind)
    m.add_boolean(False)
    for value in fields:
        if isinstance(value, bool):
            m.add_boolean(value)
        else:
            m.add_string(value)
    return Message(m.asbytes())


class _Channel:
    def __init__(self) -> None:
        self.status_event = threading.Event()


def test_exit_signal_request_is_recorded_and_still_handed_to_paramiko(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(
        ssh_command, "_PARAMIKO_REQUEST_HANDLER", lambda ch, m: seen.append(m.get_text())
    )
    channel = _Channel()
    ssh_command._handle_request(channel, _request("exit-signal", "KILL", False, "", ""))
    assert channel.fleet_exit_signal == "KILL"  # type: ignore[attr-defined]
    assert channel.status_event.is_set()
    other = _Channel()
    ssh_command._handle_request(other, _request("exit-status"))
    assert seen == ["exit-signal", "exit-status"]  # paramiko reads each from its start
    assert not hasattr(other, "fleet_exit_signal") and not other.status_event.is_set()


def test_the_handler_is_installed_on_one_transport_only() -> None:
    left, right = socket.socketpair()
    try:
        transport = paramiko.Transport(left)
        ssh_command.capture_exit_signal(transport)
        table = transport._channel_handler_table  # type: ignore[attr-defined]
        assert table[MSG_CHANNEL_REQUEST] is ssh_command._handle_request
        stock = paramiko.Transport._channel_handler_table  # type: ignore[attr-defined]
        assert stock[MSG_CHANNEL_REQUEST] is ssh_command._PARAMIKO_REQUEST_HANDLER
    finally:
        left.close()
        right.close()
