"""Scheduled commands: real `celery -A fleet beat` (and `fleet beat`) processes, real
workers, Redis and sshd hosts. Fault matrix #24 (two beats at once) among them."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.beat import CeleryBeat, run_beat_to_exit
from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, wait_until


@pytest.fixture
def beats(tmp_path: Path) -> Iterator[list[CeleryBeat]]:
    started: list[CeleryBeat] = []
    yield started
    for beat in started:
        beat.stop()


def _inventory(ssh_fleet: SSHFleet, path: Path, schedules: dict[str, Any]) -> Path:
    ssh_fleet.write_inventory(path, hosts=ssh_fleet.hosts[:2])
    doc = yaml.safe_load(path.read_text())
    doc["schedules"] = schedules
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _setup(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    tmp_path: Path,
    schedules: dict[str, Any],
) -> tuple[dict[str, str], FleetCLI]:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    inventory = _inventory(ssh_fleet, tmp_path / "inventory.yaml", schedules)
    env["FLEET_INVENTORY"] = str(inventory)
    start_worker(name="bw", concurrency=8, env=env)
    return env, FleetCLI(inventory, env)


def _runs(cli: FleetCLI) -> list[dict[str, Any]]:
    rc, runs = cli.run_json(["runs", "--limit", "100"])
    assert rc == 0, runs
    return list(reversed(runs))  # oldest first


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_every_2s_fires_ordinary_runs_marked_with_their_schedule(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    beats: list[CeleryBeat],
    tmp_path: Path,
) -> None:
    schedules = {"tick": {"command": ledger.command("echo tock"), "group": "web", "every": "2s"}}
    env, cli = _setup(fresh_redis, ssh_fleet, start_worker, tmp_path, schedules)
    beats.append(CeleryBeat(env, tmp_path))
    # At least two ordinary runs within 8 s of beat's start.
    wait_until(lambda: len([r for r in _runs(cli) if r["state"] == "finished"]) >= 2, timeout=8)
    runs = _runs(cli)
    assert all(r["schedule"] == "tick" and r["user"].startswith("beat@") for r in runs)
    rc, report = cli.run_json(["report", runs[0]["run_id"]])
    assert rc == 0 and report["state"] == "finished"
    assert {r["status"] for r in report["results"]} == {"ok"}
    assert {r["stdout"] for r in report["results"]} == {"tock\n"}
    # `fleet runs` says which schedule started each run.
    listing = cli.run(["runs"]).stdout
    assert "schedule: tick" in listing
    ledger.assert_at_most_once()
    # No shelve file next to wherever beat was started: its state is in Redis.
    assert not list(tmp_path.glob("celerybeat-schedule*"))


def test_two_beat_processes_fire_each_slot_once(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    beats: list[CeleryBeat],
    tmp_path: Path,
) -> None:
    schedules = {"twice": {"command": ledger.command("true"), "group": "web", "every": "2s"}}
    env, cli = _setup(fresh_redis, ssh_fleet, start_worker, tmp_path, schedules)
    beats.append(CeleryBeat(env, tmp_path))
    beats.append(CeleryBeat(env, tmp_path, via_fleet=True))  # `fleet beat`, the same thing
    time.sleep(10)
    for beat in beats:
        beat.stop()
    runs = _runs(cli)
    slots = [int(_epoch(r["started_at"]) // 2) for r in runs]
    assert len(runs) >= 4, runs
    assert len(slots) == len(set(slots)), slots  # never two runs for one slot
    taken = sum(b.log_text().count("already fired by another beat") for b in beats)
    assert taken >= 1  # both were firing: the other one found the slots taken
    ledger.assert_at_most_once()


def test_overlap_skip_never_runs_two_at_once_and_logs_the_skips(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    beats: list[CeleryBeat],
    tmp_path: Path,
) -> None:
    schedules = {
        "slow": {"command": ledger.command("sleep 5"), "group": "web", "every": "2s",
                 "timeout": 10}
    }  # fmt: skip
    env, cli = _setup(fresh_redis, ssh_fleet, start_worker, tmp_path, schedules)
    beat = CeleryBeat(env, tmp_path)
    beats.append(beat)
    wait_until(lambda: beat.log_text().count("firing skipped") >= 2, timeout=15)
    wait_until(lambda: len(_runs(cli)) >= 2, timeout=15)
    beat.stop()
    runs = _runs(cli)
    for earlier, later in itertools.pairwise(runs):
        assert earlier["finished_at"] is not None
        assert _epoch(later["started_at"]) >= _epoch(earlier["finished_at"]) - 0.5, runs
    rc, rows = cli.run_json(["schedules"])
    assert rc == 0 and rows[0]["skipped"] >= 2


def test_a_cron_schedule_fires_at_the_minute(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    beats: list[CeleryBeat],
    tmp_path: Path,
) -> None:
    schedules = {"minutely": {"command": ledger.command("true"), "group": "web",
                              "cron": "* * * * *"}}  # fmt: skip
    env, cli = _setup(fresh_redis, ssh_fleet, start_worker, tmp_path, schedules)
    beats.append(CeleryBeat(env, tmp_path))
    wait_until(lambda: len(_runs(cli)) >= 1, timeout=75)
    (run, *_) = _runs(cli)
    started = datetime.fromisoformat(run["started_at"])
    assert started.second < 5, run  # at the minute, not whenever beat happened to start
    assert run["schedule"] == "minutely"


def test_schedules_json_shows_next_firing_and_last_run(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    beats: list[CeleryBeat],
    tmp_path: Path,
) -> None:
    schedules = {
        "quick": {"command": ledger.command("true"), "group": "web", "every": "2s"},
        "nightly": {"command": "cleanup", "group": "web", "cron": "30 2 * * *"},
    }
    env, cli = _setup(fresh_redis, ssh_fleet, start_worker, tmp_path, schedules)
    rc, before = cli.run_json(["schedules"])
    assert rc == 0 and [r["name"] for r in before] == ["quick", "nightly"]
    assert all(r["last_run"] is None for r in before)
    beats.append(CeleryBeat(env, tmp_path))
    wait_until(lambda: len(_runs(cli)) >= 1, timeout=10)
    beats[0].stop()
    rc, after = cli.run_json(["schedules"])
    quick, nightly = after
    assert quick["when"] == "every 2s" and nightly["when"] == "cron 30 2 * * *"
    assert quick["last_run"]["run_id"] in {r["run_id"] for r in _runs(cli)}
    assert datetime.fromisoformat(nightly["next_firing"]).strftime("%H:%M") == "02:30"
    text = cli.run(["schedules"]).stdout
    assert "quick" in text and "every 2s" in text and quick["last_run"]["run_id"] in text


def test_beat_takes_a_changed_inventory_without_a_restart(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    beats: list[CeleryBeat],
    tmp_path: Path,
) -> None:
    env, cli = _setup(fresh_redis, ssh_fleet, start_worker, tmp_path, {})
    beat = CeleryBeat(env, tmp_path)
    beats.append(beat)
    inventory = Path(env["FLEET_INVENTORY"])
    doc = yaml.safe_load(inventory.read_text())
    doc["schedules"] = {"added": {"command": ledger.command("true"), "group": "web",
                                 "every": "2s"}}  # fmt: skip
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    wait_until(lambda: any(r["schedule"] == "added" for r in _runs(cli)), timeout=15)
    # A broken edit keeps the schedules that work, and says why.
    inventory.write_text(inventory.read_text() + "\nbogus: 1\n")
    wait_until(lambda: "inventory changed but not taken" in beat.log_text(), timeout=10)
    fired = len(_runs(cli))
    wait_until(lambda: len(_runs(cli)) > fired, timeout=10)


BAD_SCHEDULES = [
    ({"oops": {"command": "x", "group": "web", "every": "soon"}},
     "schedules.oops.every: expected a duration"),
    ({"late": {"command": "x", "group": "web", "cron": "0 25 * * *"}},
     "schedules.late.cron: not a valid cron"),  # only Celery's parser knows
    ({"typo": {"command": "x", "group": "web", "every": "1m", "overlpa": "skip"}},
     "schedules.typo.overlpa: unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "words"), BAD_SCHEDULES, ids=["every", "cron", "key"])
@pytest.mark.parametrize("via_fleet", [False, True], ids=["celery-beat", "fleet-beat"])
def test_a_bad_schedule_stops_beat_with_the_key_path_and_exit_2(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    tmp_path: Path,
    via_fleet: bool,
    bad: dict[str, Any],
    words: str,
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    env["FLEET_INVENTORY"] = str(_inventory(ssh_fleet, tmp_path / "inventory.yaml", bad))
    done = run_beat_to_exit(env, tmp_path, via_fleet=via_fleet)
    assert done.returncode == 2, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_fleet_beat_without_a_broker_refuses_in_one_line(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(json.dumps({"groups": {"local": {"hosts": {"l": {}}}}}))
    env = {"FLEET_INVENTORY": str(inventory), "FLEET_HOME": str(tmp_path / "home")}
    for via_fleet in (True, False):
        done = run_beat_to_exit(env, tmp_path, via_fleet=via_fleet)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith("fleet:")]
        assert len(lines) == 1 and "no broker configured" in lines[0], done.stderr
