"""--env values over stdin (fleet.stdin_env), staged by run id (fleet.runenv, the SQLite
store's mixin) and --env-from references resolved on the worker."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.cli_common import parse_env_from
from fleet.command import ExecOptions, build_invocation
from fleet.errors import ConfigError, UsageError
from fleet.inventory.hosts import Host
from fleet.inventory.loader import parse_inventory
from fleet.lifecycle import finalize_run, run_host_job
from fleet.results import HostResult, RunRecord, Status, utc_now
from fleet.runenv import env_from_refusal, resolve_env_from, run_options, stage_run_env
from fleet.settings import Settings
from fleet.stdin_env import MAX_ENV_BYTES, NO_ENV_EXIT, stdin_bytes
from fleet.store.sqlite_store import SqliteRunStore

SECRET = "s3cr3t-VALUE"
TRICKY = {
    "A": SECRET,
    "Q": "x'y\"$(touch /tmp/fleet-pwned-env)`id` \\c \\n \\\\",
    "NL": "one\ntwo\n\n",
    "EMPTY": "",
    "SPACES": "  lead and trail  \r",
}
SHOW = 'for v in A Q NL EMPTY SPACES; do eval "printf \'%s|\' \\"\\$$v\\""; done; cat; echo end'
EXPECTED = ("|".join(TRICKY[k] for k in ("A", "Q", "NL", "EMPTY", "SPACES")) + "|end\n").encode()


def _run(argv: tuple[str, ...], data: bytes | None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), input=data or b"", capture_output=True, timeout=10)


def test_values_arrive_whole_and_none_is_in_argv() -> None:
    inv = build_invocation(Host("h", "h"), SHOW, ExecOptions(env=TRICKY))
    argv_text = "\0".join(inv.argv)
    for value in TRICKY.values():
        if value.strip():
            assert value not in argv_text
    out = _run(inv.argv, stdin_bytes(inv.env_payload, None))
    assert out.stdout == EXPECTED, out.stderr
    assert not Path("/tmp/fleet-pwned-env").exists()


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_sudo_password_line_before_the_values_is_skipped(shell: str) -> None:
    # NOPASSWD: sudo leaves stdin unread, so the wrapped shell sees the password line
    # (and the pad) first: it must skip them, never evaluate or print them.
    host = Host("h", "h", become=True, become_password_env="SUDO_PW")
    inv = build_invocation(host, SHOW, ExecOptions(env=TRICKY))
    assert inv.argv[:4] == ("sudo", "-S", "-p", "")
    inner = (shell, *inv.argv[inv.argv.index("--") + 2 :])
    data = stdin_bytes(inv.env_payload, b"hunter2 'export A=pwned'")
    assert data is not None and data.startswith(b"hunter2 'export A=pwned'\n\n\n")
    out = _run(inner, data)
    assert out.stdout == EXPECTED, out.stderr
    assert b"hunter2" not in out.stdout + out.stderr


def test_a_sudo_that_reads_its_password_leaves_the_values_to_the_command() -> None:
    # What `sudo -S` does when it needs the password: one line, byte by byte, then exec.
    host = Host("h", "h", become=True, become_password_env="SUDO_PW")
    inv = build_invocation(host, SHOW, ExecOptions(env=TRICKY))
    fake_sudo = ("/bin/sh", "-c", 'IFS= read -r pw; exec "$@"', "fake-sudo")
    inner = inv.argv[inv.argv.index("--") + 1 :]
    out = _run((*fake_sudo, *inner), stdin_bytes(inv.env_payload, b"hunter2"))
    assert out.stdout == EXPECTED, out.stderr


def test_values_cut_short_run_nothing() -> None:
    inv = build_invocation(Host("h", "h"), "echo ran", ExecOptions(env={"A": SECRET}))
    out = _run(inv.argv, inv.env_payload[:-5])
    assert out.returncode == NO_ENV_EXIT and out.stdout == b""
    assert b"did not arrive" in out.stderr


def test_each_invocation_has_its_own_marker() -> None:
    options = ExecOptions(env={"A": "1"})
    first = build_invocation(Host("h", "h"), "true", options)
    second = build_invocation(Host("h", "h"), "true", options)
    assert first.env_payload.splitlines()[0] != second.env_payload.splitlines()[0]


def test_oversized_or_nul_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="too large"):
        build_invocation(Host("h", "h"), "true", ExecOptions(env={"A": "x" * MAX_ENV_BYTES}))
    with pytest.raises(ConfigError, match="NUL"):
        build_invocation(Host("h", "h"), "true", ExecOptions(env={"A": "a\0b"}))


def test_no_env_sends_nothing_and_keeps_the_command_line_short() -> None:
    inv = build_invocation(Host("h", "h"), "true", ExecOptions(env={"FLEET_RUN_ID": "r1"}))
    assert inv.env_payload == b"" and inv.argv == ("/bin/sh", "-c", "export FLEET_RUN_ID=r1; true")


# --- staged by run id ---------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRunStore]:
    s = SqliteRunStore(tmp_path / "history.sqlite3")
    yield s
    s.close()


HOST = Host("web01", "10.0.0.1")


def _new_run(store: SqliteRunStore, run_id: str = "r1") -> None:
    run = RunRecord(run_id, "uptime", "web", ("web01",), utc_now(), time.time() + 600)
    store.create_run(run, (HOST,))


def test_sqlite_store_stages_reads_and_drops_values(store: SqliteRunStore) -> None:
    assert store.staged_env("r1") is None
    store.stage_env("r1", {"A": SECRET}, 60)
    assert store.staged_env("r1") == {"A": SECRET}
    store.drop_env("r1")
    assert store.staged_env("r1") is None
    store.drop_env("r1")  # nothing to drop: fine
    store.stage_env("r2", {"A": "x"}, 1)
    time.sleep(1.2)
    assert store.staged_env("r2") is None  # expired with the run


def test_dropped_values_leave_no_bytes_in_the_history_files(tmp_path: Path) -> None:
    store = SqliteRunStore(tmp_path / "history.sqlite3")
    try:
        store.stage_env("r1", {"A": SECRET}, 60)
        store.drop_env("r1")
    finally:
        store.close()
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path


def test_a_host_gets_the_staged_values_not_the_messages(store: SqliteRunStore) -> None:
    _new_run(store)
    stage_run_env(store, "r1", ExecOptions(env={"A": SECRET}), 600)
    seen: list[dict[str, str]] = []

    def execute(host: Host, command: str, options: ExecOptions) -> HostResult:
        seen.append(dict(options.env))
        return HostResult(host=host.name, status=Status.OK, exit_code=0)

    message = ExecOptions.from_dict(ExecOptions(env={"A": SECRET}).to_message())
    assert dict(message.env) == {"A": "***"}
    run_host_job(store, "r1", HOST, "true", message, worker="w", execute=execute)
    assert seen == [{"A": SECRET, "FLEET_RUN_ID": "r1", "FLEET_HOST": "web01"}]
    assert finalize_run(store, "r1") is not None
    assert store.staged_env("r1") is None  # the run's end drops them
    assert SECRET not in store.get_run("r1").to_dict().__repr__()


def test_missing_values_end_the_host_in_error_without_running(store: SqliteRunStore) -> None:
    _new_run(store)
    result = run_options(store, "r1", HOST, ExecOptions(env={"A": "***"}))
    assert isinstance(result, HostResult) and result.status is Status.ERROR
    assert "--env value(s) of A" in (result.error or "")


# --- --env-from ------------------------------------------------------------------------

WORKER = Settings.load(
    env={"FLEET_BROKER_URL": "redis://127.0.0.1:1/0", "FLEET_SECRET_ENV": "DEPLOY_*"}
)


def test_undeclared_references_are_refused_by_a_distributed_worker() -> None:
    host = Host("h", "h", env_from={"TOKEN": "DEPLOY_TOKEN"})
    assert env_from_refusal(host, ExecOptions(), WORKER) is None
    bad = ExecOptions(env_from={"X": "FLEET_BROKER_URL"})
    reason = env_from_refusal(host, bad, WORKER)
    assert reason is not None and "--env-from X=FLEET_BROKER_URL" in reason
    assert "FLEET_SECRET_ENV" in reason
    inventory_bad = Host("h", "h", env_from={"X": "HOME"})
    assert "env_from X=HOME" in (env_from_refusal(inventory_bad, ExecOptions(), WORKER) or "")
    assert env_from_refusal(inventory_bad, bad, Settings.load(env={})) is None  # embedded


def test_references_resolve_with_their_precedence() -> None:
    host = Host("h", "h", env={"A": "host-env"}, env_from={"A": "V1", "B": "V1"})
    options = ExecOptions(env={"B": "run-env", "FLEET_HOST": "h"}, env_from={"C": "V2"})
    resolved = resolve_env_from(host, options, {"V1": "one", "V2": "two"})
    assert isinstance(resolved, ExecOptions)
    assert dict(resolved.env) == {"A": "one", "B": "run-env", "C": "two", "FLEET_HOST": "h"}
    unset = resolve_env_from(host, options, {"V1": "one"})
    assert isinstance(unset, HostResult) and unset.status is Status.ERROR
    assert "'V2', which is not set on the worker" in (unset.error or "")


def test_env_from_on_the_command_line_and_in_the_inventory_is_checked() -> None:
    assert parse_env_from(["T=DEPLOY_TOKEN"], {}) == {"T": "DEPLOY_TOKEN"}
    for bad in ("T", "T=", "T=a-b", "1T=X", "T=hunter2 value"):
        with pytest.raises(UsageError):
            parse_env_from([bad], {})
    with pytest.raises(UsageError, match="also given with --env"):
        parse_env_from(["T=X"], {"T": "v"})
    inv = parse_inventory("groups: {g: {hosts: {h: {env_from: {T: DEPLOY_TOKEN}}}}}", "x")
    assert dict(inv.host("h").env_from) == {"T": "DEPLOY_TOKEN"}
    with pytest.raises(Exception, match=r"env_from: T: expected the NAME") as info:
        parse_inventory("groups: {g: {hosts: {h: {env_from: {T: 'hunter2 x'}}}}}", "x")
    assert "hunter2" not in str(info.value)
