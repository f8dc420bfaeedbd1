"""Fault matrix #21 (issue 10 points 5 and 6): what is read back from the real Redis is
checked and rendered inert, and what is stored there is bounded.

- a record tampered in Redis (an exit code that is markup or an OSC 52 clipboard write,
  a host name and a command with escape sequences, a status that is no status) shows in
  ``fleet report -v`` on a terminal, ``fleet runs`` and ``--html`` with no raw escape,
  bell or markup; the malformed host is marked, the others shown; no exit 70;
- an amplifying inventory (1 MiB in ``defaults`` over 300 hosts) is refused at load;
- a host printing 2 MB of invalid UTF-8 costs its run about 1.4 MB of Redis, not 29.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import redis

from fleet.store.keys import host_token
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env

OSC52 = "\x1b]52;c;ZWNobyBwd25lZA==\x07"
SCRIPT = "<script>alert(1)</script>"
EVIL_HOST = f"evil\x1b[2J{OSC52}\u202e"
SGR = re.compile(r"\x1b\[[0-9;]*m")  # the colours fleet itself prints on a terminal


def on_pty(cli: FleetCLI, args: list[str]) -> tuple[int, str]:
    """`fleet ARGS` with a pseudo-terminal for stdin, stdout and stderr: what an operator sees."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        cli.argv(args),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=cli.full_env({"TERM": "xterm-256color", "COLUMNS": "120"}),
        cwd=cli.cwd,
        close_fds=True,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(controller)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def assert_inert(screen: str) -> None:
    assert "Traceback" not in screen, screen
    bare = SGR.sub("", screen)
    assert "\x1b" not in bare and "\x07" not in bare and "\u202e" not in bare, repr(bare)


def test_a_tampered_record_renders_inert_in_text_and_html(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    start_worker(name="inert", env=env)
    inventory = ssh_fleet.write_inventory(tmp_path / "inventory.yaml", ssh_fleet.hosts[:3])
    cli = FleetCLI(inventory, env)
    rc, doc = cli.run_json(["run", "echo fine", "-g", "web"])
    assert rc == 0, doc
    run_id = doc["run_id"]
    first, second, third = (h.name for h in ssh_fleet.hosts[:3])

    client = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    run_key, results_key = f"fleet:run:{run_id}", f"fleet:run:{run_id}:results"
    record = json.loads(client.hget(run_key, "record") or "")
    record |= {"command": f"echo {OSC52}{SCRIPT}", "user": f"{SCRIPT}\x1b]0;owned\x07"}
    record["hosts"] = [*record["hosts"], EVIL_HOST]
    client.hset(run_key, mapping={"record": json.dumps(record), "state": f"finished{OSC52}"})
    tampered = {
        first: {"host": first, "status": "failed", "exit_code": SCRIPT},
        second: {"host": second, "status": "ok", "exit_code": OSC52},
        third: {"host": third, "status": f"\x1b[2J{SCRIPT}", "exit_code": 0},
        EVIL_HOST: {  # well typed, every text field hostile
            "host": EVIL_HOST,
            "status": "failed",
            "exit_code": 3,
            "address": f"10.0.0.9{OSC52}",
            "stdout": f"{OSC52}{SCRIPT}\n",
            "stderr": f"\x1b[2J{SCRIPT}",
            "error": f"{SCRIPT}{OSC52}",
            "worker": f"w{OSC52}",
        },
    }
    client.hset(results_key, mapping={h: json.dumps(r) for h, r in tampered.items()})

    rc, screen = on_pty(cli, ["report", run_id, "-v"])
    assert rc == 1, screen  # hosts not ok; never 70 (an internal error)
    assert_inert(screen)
    assert "its result in the store is unreadable" in screen
    assert "\\x1b]52" in screen  # shown, escaped

    html_path = tmp_path / "report.html"
    done = cli.run(["report", run_id, "--html", str(html_path)])
    assert done.returncode == 1, done.stderr
    page = html_path.read_text()
    assert "<script" not in page.lower() and "\x1b" not in page and "\x07" not in page
    assert "&lt;script&gt;" in page

    done = cli.run(["report", run_id, "--json"])
    assert done.returncode == 1, done.stderr
    results = {r["host"]: r for r in json.loads(done.stdout)["results"]}
    assert {results[h]["status"] for h in (first, second, third)} == {"error"}
    assert all(results[h]["exit_code"] is None for h in (first, second, third))

    rc, screen = on_pty(cli, ["runs"])
    assert rc == 0, screen
    assert_inert(screen)
    assert run_id in screen
    client.close()


def test_an_amplifying_inventory_is_refused_at_load(tmp_path: Path) -> None:
    names = "\n".join(f"      h{i:03d}: {{address: 127.0.0.1}}" for i in range(300))
    inventory = tmp_path / "big.yaml"
    inventory.write_text(
        f"defaults:\n  blob: {'x' * (1 << 20)}\ngroups:\n  many:\n    hosts:\n{names}\n"
    )
    cli = FleetCLI(inventory, {"FLEET_HOME": str(tmp_path / "home")})
    done = cli.run(["run", "true", "-g", "many"])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"fleet: {inventory}: defaults.blob: the hosts would carry")
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())


def run_bytes(client: redis.Redis, prefix: str, run_id: str, hosts: list[str]) -> int:
    """Bytes of every value stored for the run: strings, hash fields, stream entries."""
    total = 0
    for key in client.scan_iter(match=f"{prefix}:run:{run_id}*"):
        kind = client.type(key)
        if kind == b"string":
            total += int(client.strlen(key))
        elif kind == b"hash":
            total += sum(int(client.hstrlen(key, f)) for f in client.hkeys(key))
        else:
            total += int(client.memory_usage(key) or 0)
    for host in hosts:
        total += int(client.strlen(f"{prefix}:claim:{run_id}:{host_token(host)}"))
    return total


def test_two_megabytes_of_invalid_utf8_are_stored_in_about_the_cap(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    start_worker(name="bounds", env=env)
    host = ssh_fleet.hosts[0].name
    inventory = ssh_fleet.write_inventory(tmp_path / "inventory.yaml", ssh_fleet.hosts[:1])
    cli = FleetCLI(inventory, env)
    command = "head -c 2000000 /dev/zero | tr '\\0' '\\377'"
    rc, doc = cli.run_json(["run", command, "-g", "web", "--timeout", "60"], timeout=180)
    assert rc == 0, doc
    (result,) = doc["results"]
    assert result["stdout_bytes"] == 2_000_000 and result["stdout_truncated"]
    assert result["stdout_kept_bytes"] == 1 << 20
    assert result["stdout"] == "\ufffd" * (1 << 20)  # the text as shown, from base64

    client = redis.Redis.from_url(fresh_redis.url)
    stored = run_bytes(client, "fleet", doc["run_id"], [host])
    assert stored <= 2_200_000, stored
    assert stored < 1.5 * (1 << 20), stored  # base64 of the bytes kept, one copy
    client.close()

    done = cli.run(["report", doc["run_id"]])
    assert "(stdout truncated: 2000000 bytes sent, 1048576 kept)" in done.stdout
