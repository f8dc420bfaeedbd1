"""Rolling runs for real: --batch, --max-fail, --fanout, over sshd hosts, Redis and two
workers, and in embedded mode; the ledger and start/end times on disk are the proof."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses, wait_until

ORDER = ["h02", "h03", "h04", "h05", "h06", "h07"]


@pytest.fixture
def cli(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: Any, tmp_path: Path
) -> FleetCLI:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    start_worker(name="a", concurrency=4, env=env)
    start_worker(name="b", concurrency=4, env=env)
    return FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml"), env)


def times_command(directory: Path, then: str = "sleep 0.6") -> str:
    """Records `START END` (epoch seconds) of each host's command in DIR/HOST."""
    target = f'{shlex.quote(str(directory))}/"$FLEET_HOST"'
    return f's=$(date +%s.%N); {then}; e=$(date +%s.%N); echo "$s $e" > {target}'


def spans(directory: Path) -> dict[str, tuple[float, float]]:
    out = {}
    for path in directory.iterdir():
        start, end = path.read_text().split()
        out[path.name] = (float(start), float(end))
    return out


def most_at_once(found: dict[str, tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in found.values()] + [(e, -1) for _, e in found.values()])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def test_max_fail_stops_further_batches_and_skips_the_rest(cli: FleetCLI, ledger: Ledger) -> None:
    command = ledger.command('test "$FLEET_HOST" != h03')
    rc, doc = cli.run_json(["run", command, "-g", "web", "--batch", "2", "--max-fail", "1"])
    assert rc == 1, doc
    assert ledger.hosts() == ["h02", "h03"]  # the next batch never started
    assert statuses(doc) == {
        "h02": "ok", "h03": "failed",
        "h04": "skipped", "h05": "skipped", "h06": "skipped", "h07": "skipped",
    }  # fmt: skip
    assert doc["batches"] == 3 and doc["max_fail"] == 1
    assert [r["batch"] for r in doc["results"]] == [1, 1, 2, 2, 3, 3]
    skipped = next(r for r in doc["results"] if r["host"] == "h05")
    assert "1 host not ok reached the run's --max-fail" in skipped["error"]
    assert skipped["exit_code"] is None
    # The history keeps it as one run, with the same verdict.
    proc = cli.run(["report", doc["run_id"]])
    assert proc.returncode == 1 and "skipped" in proc.stdout and "rollout:" in proc.stdout


def test_percent_batches_run_one_after_another(cli: FleetCLI, tmp_path: Path) -> None:
    times = tmp_path / "times"
    times.mkdir()
    rc, doc = cli.run_json(["run", times_command(times), "-g", "web", "--batch", "50%"])
    assert rc == 0, doc
    assert doc["batches"] == 2 and doc["max_fail"] is None
    batch = {r["host"]: r["batch"] for r in doc["results"]}
    assert batch == dict(zip(ORDER, [1, 1, 1, 2, 2, 2], strict=True))
    found = spans(times)
    first_end = max(found[h][1] for h in ORDER[:3])
    second_start = min(found[h][0] for h in ORDER[3:])
    assert second_start >= first_end  # batch 2 began after every host of batch 1 ended


def test_every_batch_runs_without_max_fail(cli: FleetCLI, ledger: Ledger) -> None:
    command = ledger.command('test "$FLEET_HOST" != h03')
    rc, doc = cli.run_json(["run", command, "-g", "web", "--batch", "4", "--batch-order", "random"])
    assert rc == 1
    assert ledger.hosts() == ORDER
    ledger.assert_at_most_once()
    assert sorted(r["batch"] for r in doc["results"]) == [1, 1, 1, 1, 2, 2]
    assert statuses(doc)["h03"] == "failed" and list(statuses(doc).values()).count("ok") == 5


def test_fanout_bounds_hosts_in_flight_across_workers(cli: FleetCLI, tmp_path: Path) -> None:
    times = tmp_path / "times"
    times.mkdir()
    rc, doc = cli.run_json(["run", times_command(times, "sleep 1"), "-g", "web", "--fanout", "2"])
    assert rc == 0, doc
    assert doc["fanout"] == 2 and doc["batches"] is None
    found = spans(times)
    assert sorted(found) == ORDER
    assert most_at_once(found) <= 2
    assert {r["worker"] for r in doc["results"]} <= {"a@testnode", "b@testnode"}


def test_a_copy_of_a_running_hosts_message_does_not_free_its_fanout_slot(
    cli: FleetCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second delivery of a host's message finds the host's slot held and the host
    # claimed: it must leave the slot to the delivery running the host, or one host more
    # runs at once than --fanout allows.
    times, started = tmp_path / "times", tmp_path / "started"
    times.mkdir()
    started.mkdir()
    command = times_command(times, f'touch {shlex.quote(str(started))}/"$FLEET_HOST"; sleep 3')
    proc = cli.popen(["run", command, "-g", "h02,h03", "--fanout", "1", "--json"])
    try:
        wait_until(lambda: any(started.iterdir()), timeout=30)
        first = next(started.iterdir()).name
        for name, value in cli.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("FLEET_INVENTORY", str(cli.inventory))
        from fleet.canvas import task_host
        from fleet.celery import create_app
        from fleet.settings import Settings
        from fleet.store import open_store

        store = open_store(Settings.load())
        run_id = store.list_runs(limit=1)[0].run_id
        record = store.get_run(run_id)
        host = next(h for h in store.run_hosts(run_id) if h.name == first)
        create_app(Settings.load()).send_task(
            "fleet.run_on_host",
            args=[run_id, task_host(host), record.command, dict(record.options)],
            kwargs={"fanout": 1},
            queue="fleet",
        )
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert statuses(json.loads(out)) == {"h02": "ok", "h03": "ok"}
    found = spans(times)
    assert sorted(found) == ["h02", "h03"]
    assert most_at_once(found) == 1, found
    store.close()


def test_a_redelivered_message_does_not_start_the_next_batch_early(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: Any, tmp_path: Path
) -> None:
    # The broker delivers the very same message again (same task id, same chord) while
    # its host still runs: the chord must not count the copy. It did (Celery 5.7 counts a
    # task id once, but the copy returned first), so a batch of one fired its callback at
    # once and batch 2 started beside batch 1.
    import redis

    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    cli = FleetCLI(ssh_fleet.write_inventory(tmp_path / "inventory.yaml"), env)
    times, started = tmp_path / "times", tmp_path / "started"
    times.mkdir()
    started.mkdir()
    command = times_command(times, f'touch {shlex.quote(str(started))}/"$FLEET_HOST"; sleep 2')
    client = redis.Redis.from_url(fresh_redis.url)
    proc = cli.popen(["run", command, "-g", "h02,h03", "--batch", "1", "--json"])
    try:
        # No worker yet: batch 1's one message waits in the queue, as the broker holds it.
        wait_until(lambda: client.llen("fleet") == 1, timeout=30)
        message = client.lrange("fleet", 0, -1)[0]
        start_worker(name="a", concurrency=4, env=env)
        wait_until(lambda: any(started.iterdir()), timeout=30)
        client.lpush("fleet", message)  # delivered again while its host runs
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    doc = json.loads(out)
    assert statuses(doc) == {"h02": "ok", "h03": "ok"}, doc
    found = spans(times)
    assert found["h03"][0] >= found["h02"][1], found  # batch 2 began after batch 1 ended
    assert client.llen("fleet") == 0  # the copy was consumed, not left behind
    client.close()


def test_cancel_stops_further_batches(cli: FleetCLI, ledger: Ledger) -> None:
    proc = cli.popen(["run", ledger.command("sleep 3"), "-g", "web", "--batch", "2", "--json"])
    try:
        run_ids: list[str] = []
        end = time.monotonic() + 30
        while time.monotonic() < end and not run_ids:
            run_ids = [r["run_id"] for r in json.loads(cli.run(["runs", "--json"]).stdout)]
            time.sleep(0.2)
        assert run_ids
        assert cli.run(["cancel", run_ids[0]]).returncode == 0
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    doc = json.loads(out)
    found = statuses(doc)
    assert all(found[h] == "cancelled" for h in ORDER[2:]), found
    assert set(ledger.hosts()) <= {"h02", "h03"}


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--batch", "0"], "--batch: '0': must be at least 1"),
        (["--batch", "150%"], "at most 100%"),
        (["--max-fail", "-1"], "--max-fail"),
        (["--max-fail"], "expected one argument"),
        (["--max-fail", "2"], "needs --batch"),
        (["--fanout", "0"], "--fanout"),
    ],
)
def test_bad_rolling_values_refused_before_anything_runs(
    cli: FleetCLI, ledger: Ledger, args: list[str], said: str
) -> None:
    proc = cli.run(["run", ledger.command(), "-g", "web", *args])
    assert proc.returncode == 2, proc.stderr
    assert said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert ledger.hosts() == []
    assert cli.run(["runs", "--json"]).stdout.strip() == "[]"


def test_batches_in_embedded_mode_on_local_hosts(tmp_path: Path, ledger: Ledger) -> None:
    hosts = {f"l{i}": {"connection": "local"} for i in range(1, 5)}
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"groups": {"loc": {"hosts": hosts}}}))
    cli = FleetCLI(inventory, {"FLEET_HOME": str(tmp_path / "home")})
    command = ledger.command('test "$FLEET_HOST" != l1')
    rc, doc = cli.run_json(["run", command, "-g", "loc", "--batch", "1", "--max-fail", "1"])
    assert rc == 1, doc
    assert statuses(doc) == {"l1": "failed", "l2": "skipped", "l3": "skipped", "l4": "skipped"}
    assert ledger.hosts() == ["l1"]


def test_redis_fanout_slots_free_themselves_and_expire(fresh_redis: RedisServer) -> None:
    import redis

    from fleet.inventory.hosts import Host
    from fleet.results import RunRecord, utc_now
    from fleet.store.protocol import Slot
    from fleet.store.redis_store import RedisRunStore

    store = RedisRunStore.from_url(fresh_redis.url)
    hosts = tuple(Host(n, "127.0.0.1") for n in ("a", "b", "c"))
    run = RunRecord("r1", "true", "all", ("a", "b", "c"), utc_now(), time.time() + 60)
    store.create_run(run, hosts)
    assert store.take_slot("fanout:r1", "a", 2, 30) is Slot.TAKEN
    assert store.take_slot("fanout:r1", "a", 2, 30) is Slot.HELD  # not a second slot
    assert store.take_slot("fanout:r1", "b", 2, 0.2)
    assert not store.take_slot("fanout:r1", "c", 2, 30)
    time.sleep(0.3)  # b's holder "died": its slot frees itself
    assert store.take_slot("fanout:r1", "c", 2, 30)
    store.release_slot("fanout:r1", "a")
    assert store.take_slot("fanout:r1", "b", 2, 30)
    client = redis.Redis.from_url(fresh_redis.url)
    assert client.ttl("fleet:slots:" + b"fanout:r1".hex()) > 0
    store.close()


API_SCRIPT = """
import json, sys
import fleet
handle = fleet.run("test $FLEET_HOST != l2", "loc", inventory=sys.argv[1], batch="50%",
                   max_fail=1, fanout=1)
report = handle.wait(timeout=60)
print(json.dumps({r.host: r.status.value for r in report.results}))
"""


def test_python_api_rolls_out_too(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.integration.fleetcli import REPO

    hosts = {f"l{i}": {"connection": "local"} for i in range(1, 5)}
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"groups": {"loc": {"hosts": hosts}}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLEET_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-c", API_SCRIPT, str(inventory)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "l1": "ok", "l2": "failed", "l3": "skipped", "l4": "skipped"
    }  # fmt: skip
