"""fleet's Celery safety settings hold whatever `celeryconfig.py` a worker starts beside."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import redis
from celery import Celery

from tests.harness.redis_server import RedisServer
from tests.harness.sshd import SSHFleet
from tests.harness.workers import StartWorker
from tests.integration.fleetcli import fleet_env, wait_until


class _Payload:
    """Unpickling this creates `marker`: what a pickle in the broker would do to a worker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_site_celeryconfig_accepting_pickle_is_not_taken_and_said(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "celeryconfig.py").write_text(
        "accept_content = ['pickle', 'json']\nworker_send_task_events = True\n"
    )
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    worker = start_worker(name="site", env=env, cwd=site)
    log = worker.log_text()
    refusal = [line for line in log.splitlines() if "settings not taken" in line]
    assert len(refusal) == 1, log
    assert "accept_content=['pickle', 'json']" in refusal[0] and "kept ['json']" in refusal[0]
    # The site's other, harmless setting is taken.
    assert "task events: ON" in log, log

    marker = tmp_path / "pwned"
    sender = Celery("attacker", broker=fresh_redis.url)
    sender.conf.accept_content = ["pickle", "json"]
    with sender.connection_for_write() as conn:
        sender.send_task(
            "fleet.run_on_host",
            args=[_Payload(marker)],
            serializer="pickle",
            queue="fleet",
            connection=conn,
        )
    wait_until(lambda: "untrusted content" in worker.log_text(), timeout=20)
    assert not marker.exists()
    assert worker.is_running


def test_pickle_payload_really_would_run_when_unpickled(tmp_path: Path) -> None:
    # The test above is only meaningful if its payload bites: show that it does.
    marker = tmp_path / "bitten"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_an_explicit_prefetch_multiplier_is_said_at_start(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    worker = start_worker(name="greedy", env=env, extra_args=["--prefetch-multiplier", "4"])
    lines = [line for line in worker.log_text().splitlines() if "--prefetch-multiplier 4" in line]
    assert len(lines) == 1 and "other hosts" in lines[0], worker.log_text()
    quiet = start_worker(name="plain", env=env)
    assert "prefetch" not in quiet.log_text() and "not taken" not in quiet.log_text()


def test_a_worker_warns_at_start_when_redis_may_evict_keys(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
    finally:
        client.close()
    env = fleet_env(fresh_redis.url, ssh_fleet.known_hosts, tmp_path / "home")
    worker = start_worker(name="evicting", env=env)
    lines = [line for line in worker.log_text().splitlines() if "maxmemory-policy" in line]
    assert len(lines) == 1 and "'allkeys-lru'" in lines[0] and "noeviction" in lines[0]
