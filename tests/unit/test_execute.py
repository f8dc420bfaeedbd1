"""ExecOptions, command wrapping (env, sudo), capped buffers and the dispatcher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.command import CappedBuffer, ExecOptions, build_invocation
from fleet.errors import ConfigError
from fleet.execute import execute
from fleet.inventory.hosts import Host
from fleet.results import Status
from fleet.settings import Settings
from fleet.stdin_env import stdin_bytes


def test_options_round_trip_through_json() -> None:
    options = ExecOptions(command_timeout=5, env_from={"TOKEN": "DEPLOY_TOKEN"}, become=True)
    again = ExecOptions.from_dict(json.loads(json.dumps(options.to_dict())))
    assert again == options
    assert again.to_dict()["env_from"] == {"TOKEN": "DEPLOY_TOKEN"}


def test_env_values_never_leave_as_data() -> None:
    # The task message and the run record carry the names only (fleet.runenv stages
    # the values in the run store).
    options = ExecOptions(env={"SECRET": "s3cr3t-VALUE"}, env_from={"T": "W"})
    for data in (options.to_dict(), options.to_message()):
        assert data["env"] == {"SECRET": "***"} and data["env_from"] == {"T": "W"}
        assert "s3cr3t" not in json.dumps(data)
    with pytest.raises(ConfigError):
        ExecOptions(env_from={"T": "not a name"})


def test_options_from_settings_and_overrides() -> None:
    settings = Settings.load(env={"FLEET_COMMAND_TIMEOUT": "7", "FLEET_SSH_CONFIG": "none"})
    options = ExecOptions.from_settings(settings, connect_timeout=2.0)
    assert options.command_timeout == 7 and options.connect_timeout == 2.0
    assert options.known_hosts == settings.known_hosts
    assert options.ssh_config_path is None
    with pytest.raises(ConfigError):
        ExecOptions.from_settings(settings, nope=1)


@pytest.mark.parametrize("name", ["1X", "A-B", "X;rm -rf /", "", "A B"])
def test_bad_env_names_rejected(name: str) -> None:
    with pytest.raises(ConfigError):
        ExecOptions(env={name: "v"})
    with pytest.raises(ConfigError):
        build_invocation(Host(name="h", address="h", env={name: "v"}), "true", ExecOptions())


def test_env_values_go_over_stdin_not_argv() -> None:
    host = Host(name="h", address="h", env={"A": "x'y $(id)"})
    options = ExecOptions(env={"B": "s3cr3t-VALUE", "FLEET_RUN_ID": "r1"})
    inv = build_invocation(host, 'echo "$A|$B|$FLEET_RUN_ID"; cat', options)
    assert "s3cr3t" not in " ".join(inv.argv) and "x'y" not in " ".join(inv.argv)
    assert "s3cr3t" not in repr(inv)
    assert "FLEET_RUN_ID=r1" in inv.argv[-1]  # fleet's own, not secret: inline
    data = stdin_bytes(inv.env_payload, None)
    out = subprocess.run(list(inv.argv), input=data, capture_output=True, check=True).stdout
    assert out == b"x'y $(id)|s3cr3t-VALUE|r1\n"  # and cat saw /dev/null
    assert not inv.become
    plain = build_invocation(Host(name="h", address="h"), "true", ExecOptions())
    assert plain.env_payload == b"" and stdin_bytes(plain.env_payload, None) is None


def test_become_wraps_with_sudo_n() -> None:
    host = Host(name="h", address="h", become=True, become_user="postgres")
    inv = build_invocation(host, "id", ExecOptions())
    assert inv.argv[:5] == ("sudo", "-n", "-u", "postgres", "--") and inv.become
    assert build_invocation(host, "id", ExecOptions(become=False)).argv[0] == "/bin/sh"
    plain = Host(name="h", address="h")
    assert build_invocation(plain, "id", ExecOptions(become=True, become_user="x")).argv[:4] == (
        "sudo",
        "-n",
        "-u",
        "x",
    )


def test_sudo_password_only_by_reference() -> None:
    host = Host(name="h", address="h", become=True, become_password_env="SUDO_PW")
    inv = build_invocation(host, "id", ExecOptions())
    assert inv.argv[:4] == ("sudo", "-S", "-p", "") and inv.sudo_password_env == "SUDO_PW"


def test_sudo_password_never_reaches_the_command() -> None:
    # When sudo needs no password (NOPASSWD), it leaves stdin unread: the wrapped
    # script must not inherit it. Run what sudo would exec, with the password on stdin.
    host = Host(name="h", address="h", become=True, become_password_env="SUDO_PW")
    inv = build_invocation(host, "cat; echo end", ExecOptions())
    inner = list(inv.argv[inv.argv.index("--") + 1 :])
    out = subprocess.run(inner, input=b"hunter2\n", capture_output=True, check=True).stdout
    assert out == b"end\n"


def test_capped_buffer() -> None:
    buf = CappedBuffer(4)
    for chunk in (b"ab", b"cd", b"ef"):
        buf.feed(chunk)
    assert (buf.text(), buf.total, buf.truncated) == ("abcd", 6, True)
    half = CappedBuffer(2)
    half.feed("é".encode() + b"x")
    assert half.text() == "é" and not CappedBuffer(9).truncated


def test_execute_dispatches_local_without_paramiko(tmp_path: Path) -> None:
    code = (
        "import sys; from fleet.execute import execute; from fleet.command import ExecOptions;"
        " from fleet.inventory.hosts import Host;"
        "r = execute(Host(name='l', address='localhost', connection='local'), 'echo hi',"
        " ExecOptions()); assert r.stdout == 'hi\\n', r;"
        "assert 'paramiko' not in sys.modules, 'paramiko imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_execute_ssh_host_never_raises() -> None:
    host = Host(name="bad", address="127.0.0.1", port=1, user="x", jump="@:")
    result = execute(host, "true", ExecOptions(connect_timeout=0.5, ssh_config=None))
    assert result.status is Status.ERROR
