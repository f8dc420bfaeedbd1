"""fleet script, copy and fetch end to end: real sshd hosts, Redis, Celery workers, the CLI;
and on `connection: local` in embedded mode (no broker).

The harness's sshd hosts are addresses of this one machine, logged in as the test user:
they share one filesystem, so a copy's DEST is the same file for every host (each host's
copy is still checked on that host, and they race to rename over it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet, write_inventory
from tests.harness.sudo_user import SUDO_USER, ensure_sudo_user, uid_of
from tests.integration.conftest import SESSION_FLEET_SIZE
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses

ARGS = ["a b", "it's", '"double"', "$HOME", "-x", "semi;colon", ""]
SCRIPT = '#!/bin/sh\nfor a in "$@"; do printf "[%s]\\n" "$a"; done\nprintf "%s\\n" "$0"\n'


def run_script_json(cli: FleetCLI, args: list[str], script_args: list[str]) -> tuple[int, Any]:
    """`fleet script ... --json -- ARGS`: every word after `--` is the script's."""
    proc = cli.run(["script", *args, "--json", "--", *script_args])
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def cluster(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: Any, tmp_path: Path
) -> tuple[FleetCLI, Path]:
    """A CLI on the session's six hosts whose temporary files go to their own TMPDIR."""
    tmpdir = tmp_path / "remote-tmp"
    tmpdir.mkdir()
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    start_worker(name="a", concurrency=6, env=env)
    inventory = ssh_fleet.write_inventory(
        tmp_path / "inventory.yaml", extra_vars={"env": {"TMPDIR": str(tmpdir)}}
    )
    return FleetCLI(inventory, env), tmpdir


def test_script_arguments_arrive_intact_and_its_directory_is_removed(
    cluster: tuple[FleetCLI, Path], tmp_path: Path
) -> None:
    cli, tmpdir = cluster
    script = tmp_path / "show args.sh"
    script.write_text(SCRIPT)
    rc, doc = run_script_json(cli, [str(script), "-g", "web"], ARGS)
    assert rc == 0, doc
    expected = "".join(f"[{a}]\n" for a in ARGS)
    for result in doc["results"]:
        assert result["status"] == "ok", result
        assert result["stdout"].startswith(expected), result["stdout"]
        path = result["stdout"].splitlines()[-1]
        assert path.startswith(f"{tmpdir}/fleet.") and path.endswith("/show args.sh")
        assert result["transfer"]["bytes"] == len(SCRIPT)
        assert result["transfer"]["sha256"] == hashlib.sha256(SCRIPT.encode()).hexdigest()
    assert doc["command"].startswith("script show args.sh -- ")
    assert list(tmpdir.iterdir()) == []  # every host's private directory is gone


def test_script_directory_removed_after_a_timeout(
    cluster: tuple[FleetCLI, Path], tmp_path: Path
) -> None:
    cli, tmpdir = cluster
    script = tmp_path / "slow.sh"
    script.write_text("#!/bin/sh\necho started\nsleep 60\n")
    rc, doc = cli.run_json(["script", str(script), "-g", "web", "--timeout", "2"])
    assert rc == 1
    assert set(statuses(doc).values()) == {"timeout"}
    assert list(tmpdir.iterdir()) == []


def test_copy_5mib_to_10_hosts_atomic_verified_with_mode(
    make_ssh_fleet: Callable[..., SSHFleet],
    fresh_redis: RedisServer,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    fleet = make_ssh_fleet(10)
    env = fleet_env(fresh_redis.url, fleet.known_hosts, tmp_path / "home")
    start_worker(name="a", concurrency=10, env=env)
    cli = FleetCLI(fleet.write_inventory(tmp_path / "inventory.yaml"), env)
    source = tmp_path / "app.bin"
    source.write_bytes(os.urandom(5 * 1024 * 1024))
    new = hashlib.sha256(source.read_bytes()).hexdigest()
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    dest = dest_dir / "app.bin"
    dest.write_bytes(os.urandom(5 * 1024 * 1024))
    old = hashlib.sha256(dest.read_bytes()).hexdigest()

    seen: dict[str, int] = {}
    stop = threading.Event()

    def reader() -> None:  # reads DEST over and over while the hosts replace it
        while not stop.is_set():
            digest = hashlib.sha256(dest.read_bytes()).hexdigest()
            seen[digest] = seen.get(digest, 0) + 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        rc, doc = cli.run_json(["copy", str(source), str(dest_dir), "-g", "web", "--mode", "0640"])
    finally:
        stop.set()
        thread.join()
    assert rc == 0, doc
    assert len(doc["results"]) == 10
    for result in doc["results"]:
        assert result["status"] == "ok", result
        assert result["transfer"] == {"path": str(dest), "bytes": 5 * 1024 * 1024, "sha256": new}
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == new
    assert dest.stat().st_mode & 0o7777 == 0o640
    assert set(seen) <= {old, new}, "a reader saw a partial file"
    assert sum(seen.values()) > 1
    assert [p.name for p in dest_dir.iterdir()] == ["app.bin"]  # no temporary left
    # The staged file is gone from Redis once the run is over (and had a TTL before).
    import redis

    client = redis.Redis.from_url(fresh_redis.url)
    assert [k for k in client.scan_iter("*") if b":blob" in k] == []


def test_sudo_makes_the_difference_for_a_plain_login_user(
    fresh_redis: RedisServer, start_worker: Any, tmp_path: Path
) -> None:
    # Logged in as root (the harness's usual user in CI), --sudo changes nothing one can
    # see. As a plain user it must: a root-owned file where the user may not write, and
    # without it the user's own file, or "Permission denied".
    reason = ensure_sudo_user()
    if reason is not None:
        pytest.skip(reason)
    public = Path(tempfile.mkdtemp(prefix="fleet-sudo-"))
    fleet: SSHFleet | None = None
    try:
        # sshd reads AuthorizedKeysFile as the user logging in: the fleet's directory
        # must be reachable by it (pytest's own temporary directories are root's alone).
        fleet = SSHFleet(public / "sshd", count=1, first=SESSION_FLEET_SIZE + 40)
        for path in (public, fleet.dir, fleet.home):
            path.chmod(0o755)
        fleet.authorized_keys.chmod(0o644)
        remote_tmp, owned, rooted = public / "tmp", public / "mine", public / "etc"
        for directory in (remote_tmp, owned, rooted):
            directory.mkdir(mode=0o755)
        for directory in (remote_tmp, owned):
            os.chown(directory, uid_of(), -1)
        env = fleet_env(fresh_redis.url, fleet.known_hosts, tmp_path / "home")
        start_worker(name="a", concurrency=2, env=env)
        inventory = write_inventory(
            tmp_path / "inventory.yaml",
            fleet.hosts,
            identity_file=fleet.client_key,
            user=SUDO_USER,
            extra_vars={"env": {"TMPDIR": str(remote_tmp)}},
        )
        cli = FleetCLI(inventory, env)
        source = tmp_path / "app.conf"
        source.write_text("setting = 1\n")

        rc, doc = cli.run_json(["run", "id -un", "-g", "web"])
        assert rc == 0 and doc["results"][0]["stdout"] == f"{SUDO_USER}\n", doc["results"]
        rc, doc = cli.run_json(["run", "id -un", "-g", "web", "--sudo"])
        assert rc == 0 and doc["results"][0]["stdout"] == "root\n", doc["results"]

        rc, doc = cli.run_json(["copy", str(source), str(rooted / "app.conf"), "-g", "web"])
        assert rc == 1 and doc["results"][0]["status"] == "failed", doc["results"]
        assert "Permission denied" in doc["results"][0]["error"]
        assert not (rooted / "app.conf").exists()

        rc, doc = cli.run_json(
            ["copy", str(source), str(rooted / "app.conf"), "-g", "web", "--sudo"]
        )
        assert rc == 0, doc["results"]
        placed = (rooted / "app.conf").stat()
        assert placed.st_uid == 0 and placed.st_mode & 0o7777 == 0o644
        assert (rooted / "app.conf").read_text() == "setting = 1\n"

        rc, doc = cli.run_json(["copy", str(source), str(owned / "app.conf"), "-g", "web"])
        assert rc == 0, doc["results"]
        assert (owned / "app.conf").stat().st_uid == uid_of()
        assert list(remote_tmp.iterdir()) == []  # every upload's private directory gone
    finally:
        if fleet is not None:
            fleet.stop()
        shutil.rmtree(public, ignore_errors=True)


def test_copy_failures_say_why(cluster: tuple[FleetCLI, Path], tmp_path: Path) -> None:
    cli, _ = cluster
    source = tmp_path / "f"
    source.write_text("x")
    rc, doc = cli.run_json(["copy", str(source), "/nonexistent-dir/f", "-g", "h02"])
    assert rc == 1
    [result] = doc["results"]
    assert result["status"] == "failed" and "No such file or directory" in result["error"]


def test_fetch_into_localdir_host_name(
    ssh_fleet: SSHFleet, fresh_redis: RedisServer, start_worker: Any, tmp_path: Path
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    start_worker(name="a", concurrency=6, env=env)
    hosts = ssh_fleet.hosts
    entry = {"user": ssh_fleet.user, "identity_file": str(ssh_fleet.client_key)}
    names = [h.name for h in hosts[:4]] + ["../../escaped", "a/b"]
    group = {
        name: {"address": host.address, "port": host.port, **entry}
        for name, host in zip(names, hosts, strict=True)
    }
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"groups": {"web": {"hosts": group}}}))
    cli = FleetCLI(inventory, env)
    out = tmp_path / "work" / "OUT"
    rc, doc = cli.run_json(["fetch", "/etc/hostname", str(out), "-g", "web"])
    assert rc == 0, doc
    expected = Path("/etc/hostname").read_bytes()
    for name in hosts[:4]:
        assert (out / name.name / "hostname").read_bytes() == expected
        assert (out / name.name / "hostname").stat().st_mode & 0o777 == 0o600
    assert (out / "%2E.%2F..%2Fescaped" / "hostname").read_bytes() == expected
    assert (out / "a%2Fb" / "hostname").read_bytes() == expected
    assert not (tmp_path / "escaped").exists() and not (out / "a").exists()
    assert len(list(out.iterdir())) == 6
    for result in doc["results"]:
        assert result["transfer"]["bytes"] == len(expected)
    # A missing remote file: failed, with the reason.
    rc, doc = cli.run_json(["fetch", "/nonexistent-file", str(out), "-g", "web"])
    assert rc == 1 and set(statuses(doc).values()) == {"failed"}
    assert all("No such file" in r["error"] for r in doc["results"])


def _refused_before_anything(cli: FleetCLI, args: list[str], words: str) -> None:
    proc = cli.run(args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    runs = cli.run(["runs", "--json"])
    assert runs.stdout.strip() == "[]", runs.stdout


def test_bad_local_files_are_refused_before_anything_runs(
    cluster: tuple[FleetCLI, Path], tmp_path: Path
) -> None:
    cli, _ = cluster
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    empty = tmp_path / "empty.sh"
    empty.write_bytes(b"")
    cases = [
        (["copy", str(tmp_path / "missing"), "/tmp/x", "-g", "web"], "no such file"),
        (["copy", str(tmp_path), "/tmp/x", "-g", "web"], "is a directory"),
        (["script", str(tmp_path / "missing.sh"), "-g", "web"], "no such file"),
        (["script", str(empty), "-g", "web"], "empty"),
    ]
    for args, words in cases:
        _refused_before_anything(cli, args, words)
    cli.env["FLEET_TRANSFER_LIMIT"] = "1024"
    _refused_before_anything(cli, ["copy", str(big), "/tmp/x", "-g", "web"], "transfer limit")


def test_script_copy_fetch_on_local_hosts_embedded(tmp_path: Path) -> None:
    tmpdir = tmp_path / "remote-tmp"
    tmpdir.mkdir()
    inventory = tmp_path / "inventory.yaml"
    local = {"connection": "local", "env": {"TMPDIR": str(tmpdir)}}
    hosts = {"localhost": local, "../up": local}
    inventory.write_text(yaml.safe_dump({"groups": {"local": {"hosts": hosts}}}))
    cli = FleetCLI(inventory, {"FLEET_HOME": str(tmp_path / "home")})
    script = tmp_path / "s.sh"
    script.write_text(SCRIPT)
    rc, doc = run_script_json(cli, [str(script), "-g", "local"], ARGS)
    assert rc == 0, doc
    assert all(r["stdout"].startswith("".join(f"[{a}]\n" for a in ARGS)) for r in doc["results"])
    assert list(tmpdir.iterdir()) == []

    source = tmp_path / "conf"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    dest = tmp_path / "placed"
    rc, doc = cli.run_json(["copy", str(source), str(dest), "-g", "localhost", "--mode", "600"])
    assert rc == 0, doc
    assert dest.read_bytes() == source.read_bytes() and dest.stat().st_mode & 0o777 == 0o600

    out = tmp_path / "out"
    rc, doc = cli.run_json(["fetch", str(dest), str(out), "-g", "local"])
    assert rc == 0, doc
    assert (out / "localhost" / "placed").read_bytes() == source.read_bytes()
    assert (out / "%2E.%2Fup" / "placed").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["%2E.%2Fup", "localhost"]
    # Staged data is gone from the embedded history once the runs are over.
    import sqlite3

    conn = sqlite3.connect(tmp_path / "home" / "history.sqlite3")
    assert conn.execute("SELECT COUNT(*) FROM blobs").fetchone() == (0,)


def test_copy_keeps_an_existing_files_mode_and_rolls_out_in_batches(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    hosts = {f"l{i}": {"connection": "local"} for i in range(1, 4)}
    inventory.write_text(yaml.safe_dump({"groups": {"local": {"hosts": hosts}}}))
    cli = FleetCLI(inventory, {"FLEET_HOME": str(tmp_path / "home")})
    source = tmp_path / "conf"
    source.write_text("new\n")
    secret = tmp_path / "secret.conf"
    secret.write_text("old\n")
    secret.chmod(0o600)
    fresh = tmp_path / "fresh.conf"
    # Without --mode, an existing file keeps its mode (cp's rule): a 0600 file must not
    # become world-readable because it was updated; a new file gets 0644.
    for dest, mode in ((secret, 0o600), (fresh, 0o644)):
        rc, doc = cli.run_json(["copy", str(source), str(dest), "-g", "l1"])
        assert rc == 0, doc
        assert dest.read_text() == "new\n" and dest.stat().st_mode & 0o777 == mode
    # A read-only file is replaced too (its mode is set after the content is written).
    secret.chmod(0o400)
    source.write_text("newer\n")
    rc, doc = cli.run_json(["copy", str(source), str(secret), "-g", "local", "--batch", "1"])
    assert rc == 0, doc
    assert doc["batches"] == 3 and [r["batch"] for r in doc["results"]] == [1, 2, 3]
    assert secret.read_text() == "newer\n" and secret.stat().st_mode & 0o777 == 0o400
    assert all(r["transfer"]["bytes"] == 6 for r in doc["results"])
