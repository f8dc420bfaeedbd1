"""Host affinity (fleet.affinity): real workers, Redis and sshd; no timing assertions.

Each host's task goes to the worker holding its connection, so a second run reuses
every connection; a worker gone before a run gets no hosts, and the messages waiting
for a worker that dies mid-run are moved back to the plain queue for the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

from fleet.affinity import FRESH_S, TTL_S, choose, personal_queue
from fleet.store.redis_store import RedisRunStore
from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import MakeFleet, SSHFleet
from tests.harness.workers import CeleryWorker, StartWorker
from tests.integration.fleetcli import FleetCLI, fleet_env, statuses, wait_until


def _cli(server: RedisServer, fleet: SSHFleet, tmp_path: Path) -> FleetCLI:
    env = fleet_env(server.url, fleet.known_hosts, tmp_path / "home")
    env["FLEET_HOST_AFFINITY"] = "1"
    return FleetCLI(fleet.write_inventory(tmp_path / "inventory.yaml"), env)


def _live(server: RedisServer, queue: str = "fleet") -> list[str]:
    store = RedisRunStore.from_url(server.url)
    try:
        return sorted(store.live_workers([queue], TTL_S - FRESH_S).get(queue, []))
    finally:
        store.close()


def _personal(worker: CeleryWorker, queue: str = "fleet") -> str:
    return personal_queue(worker.node_name, queue)


def _run(cli: FleetCLI, args: list[str]) -> dict[str, object]:
    _code, doc = cli.run_json(["run", *args, "--group", "web", "--json"])
    assert isinstance(doc, dict), doc
    return doc


def test_second_run_reuses_every_connection(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    cli = _cli(fresh_redis, ssh_fleet, tmp_path)
    a = start_worker(name="aff1", concurrency=4, env=cli.env)
    b = start_worker(name="aff2", concurrency=4, env=cli.env)
    wait_until(lambda: len(_live(fresh_redis)) == 2)
    first = _run(cli, ["true"])
    second = _run(cli, ["true"])
    names = {h.name for h in ssh_fleet.hosts}
    assert set(statuses(first).values()) == {"ok"}
    assert set(statuses(second).values()) == {"ok"}, statuses(second)
    results = second["results"]
    assert isinstance(results, list) and {r["host"] for r in results} == names
    assert all(r["connection_reused"] for r in results), results
    # The same host, the same worker; and both workers had hosts.
    before = {r["host"]: r["worker"] for r in first["results"]}  # type: ignore[attr-defined]
    assert {r["host"]: r["worker"] for r in results} == before
    assert set(before.values()) == {a.node_name, b.node_name}


def test_worker_gone_before_the_run_gets_no_hosts(
    fresh_redis: RedisServer, ssh_fleet: SSHFleet, start_worker: StartWorker, tmp_path: Path
) -> None:
    cli = _cli(fresh_redis, ssh_fleet, tmp_path)
    doomed = start_worker(name="affgone", concurrency=4, env=cli.env)
    survivor = start_worker(name="affstay", concurrency=4, env=cli.env)
    wait_until(lambda: len(_live(fresh_redis)) == 2)
    first = _run(cli, ["true"])
    assert set(statuses(first).values()) == {"ok"}
    doomed.kill()  # SIGKILL: no unregistering, its heartbeat just stops
    alone = [personal_queue(survivor.node_name, "fleet")]
    wait_until(lambda: _live(fresh_redis) == alone, timeout=30)
    second = _run(cli, ["true"])
    assert set(statuses(second).values()) == {"ok"}, statuses(second)
    assert {r["worker"] for r in second["results"]} == {survivor.node_name}  # type: ignore[attr-defined]


def _one_leaves_mid_run(
    server: RedisServer,
    fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
    prefix: str,
    *,
    leave: Callable[[CeleryWorker], None],
    deadline: str,
    timeout: str,
) -> tuple[dict[str, Any], str, set[str], CeleryWorker, str, redis.Redis]:
    """Two workers of one slot each; the hosts wait in their personal queues. Once the
    worker with more hosts routed to it (with 6 hosts, 3 or more) has started a host and
    still has others waiting, `leave` it. Returns the run's report, the CLI's stderr,
    the host names, the other worker, the leaving one's personal queue and a broker
    client (the caller closes it)."""
    cli = _cli(server, fleet, tmp_path)
    workers = [start_worker(name=f"{prefix}{k}", concurrency=1, env=cli.env) for k in (1, 2)]
    wait_until(lambda: len(_live(server)) == 2)
    names = {h.name for h in fleet.hosts}
    queues = [_personal(w) for w in workers]
    routed = [choose(n, queues) for n in names]
    leaving, survivor = sorted(workers, key=lambda w: -routed.count(_personal(w)))
    proc = cli.popen(
        ["run", ledger.command("sleep 2"), "--group", "web", "--deadline", deadline,
         "--timeout", timeout, "--json"]
    )  # fmt: skip
    broker = redis.Redis.from_url(server.url)
    personal = _personal(leaving)
    wait_until(lambda: len(ledger.hosts()) >= 2 and broker.llen(personal) >= 1, timeout=30)
    leave(leaving)
    out, err = proc.communicate(timeout=120)
    return json.loads(out), err, names, survivor, personal, broker


def test_worker_killed_mid_run_every_host_accounted_for(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    """Two workers of one slot each; the run's hosts wait in their personal queues.
    SIGKILL one mid-run: the host it was running ends `lost` (at the deadline); the
    messages still waiting for it are moved to the plain queue once its registration
    expires, and run on the other worker. Nothing runs twice."""
    doc, err, names, survivor, personal, broker = _one_leaves_mid_run(
        fresh_redis, ssh_fleet, start_worker, ledger, tmp_path, "affmid",
        leave=lambda w: w.kill(), deadline="40", timeout="5",
    )  # fmt: skip
    assert "Traceback" not in err, err
    got = statuses(doc)
    assert set(got) == names
    assert set(got.values()) <= {"ok", "lost"}, got
    assert list(got.values()).count("lost") <= 1, got
    ok_workers = {r["worker"] for r in doc["results"] if r["status"] == "ok"}
    assert survivor.node_name in ok_workers
    assert broker.llen(personal) == 0
    ledger.assert_at_most_once()
    broker.close()


def test_worker_stopped_mid_run_hands_its_waiting_hosts_over(
    fresh_redis: RedisServer,
    ssh_fleet: SSHFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    """A warm shutdown (SIGTERM: a deploy, a restart; Celery's shutdown also follows an
    unrecoverable error) mid-run: the host it runs finishes, and the messages still
    waiting in its personal queue go to the other worker, so every host ends `ok`
    instead of `lost` at the deadline. Nothing runs twice."""
    doc, err, names, survivor, personal, broker = _one_leaves_mid_run(
        fresh_redis, ssh_fleet, start_worker, ledger, tmp_path, "affstop",
        leave=lambda w: w.stop(timeout=30), deadline="60", timeout="10",
    )  # fmt: skip
    assert "Traceback" not in err, err
    got = statuses(doc)
    assert got == dict.fromkeys(names, "ok"), got
    assert survivor.node_name in {r["worker"] for r in doc["results"]}
    assert broker.llen(personal) == 0
    ledger.assert_at_most_once()
    broker.close()


def test_a_dead_worker_of_two_queues_hands_each_host_back_to_its_own_queue(
    fresh_redis: RedisServer,
    make_ssh_fleet: MakeFleet,
    start_worker: StartWorker,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    """Per-datacenter queues survive failover. One worker serves ``fleet`` and ``dc2``
    and is SIGKILLed mid-run with hosts of both queues waiting for it: each host goes
    back to its own queue and runs on a worker of that queue, never on the other
    datacenter's worker. Nothing runs twice."""
    hosts = make_ssh_fleet(12)
    plain_hosts, dc2_hosts = hosts.hosts[:6], hosts.hosts[6:]
    inventory = tmp_path / "inventory.yaml"
    groups = {}
    for group, members, extra in (("web", plain_hosts, {}), ("dc2", dc2_hosts, {"queue": "dc2"})):
        written = yaml.safe_load(
            hosts.write_inventory(tmp_path / f"{group}.yaml", members, group, extra).read_text()
        )
        groups.update(written["groups"])
    inventory.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    env = fleet_env(fresh_redis.url, hosts.known_hosts, tmp_path / "home")
    env["FLEET_HOST_AFFINITY"] = "1"
    cli = FleetCLI(inventory, env)
    both = start_worker(name="affq-both", queues=("fleet", "dc2"), concurrency=1, env=env)
    plain = start_worker(name="affq-plain", queues=("fleet",), concurrency=1, env=env)
    dc2 = start_worker(name="affq-dc2", queues=("dc2",), concurrency=1, env=env)
    wait_until(lambda: len(_live(fresh_redis)) == 2 and len(_live(fresh_redis, "dc2")) == 2)
    mine = {
        queue: [
            h.name
            for h in members
            if choose(h.name, [_personal(w, queue) for w in pair]) == _personal(both, queue)
        ]
        for queue, members, pair in (
            ("fleet", plain_hosts, (both, plain)),
            ("dc2", dc2_hosts, (both, dc2)),
        )
    }
    # Deterministic (rendezvous hashing of fixed names): the doomed worker has several
    # hosts of each queue, so some of both are still waiting when it dies.
    assert len(mine["fleet"]) >= 2 and len(mine["dc2"]) >= 2, mine
    proc = cli.popen(
        ["run", ledger.command("sleep 2"), "--group", "web:dc2", "--deadline", "40",
         "--timeout", "5", "--json"]
    )  # fmt: skip
    broker = redis.Redis.from_url(fresh_redis.url)
    waiting = [_personal(both, "fleet"), _personal(both, "dc2")]
    wait_until(
        lambda: (
            bool(set(ledger.hosts()) & set(mine["fleet"] + mine["dc2"]))
            and all(broker.llen(q) >= 1 for q in waiting)
        ),
        timeout=30,
    )
    both.kill()
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    doc = json.loads(out)
    got = statuses(doc)
    assert set(got) == {h.name for h in hosts.hosts}
    assert set(got.values()) <= {"ok", "lost"}, got
    assert list(got.values()).count("lost") <= 1, got
    ran_on = {r["host"]: r["worker"] for r in doc["results"] if r["status"] == "ok"}
    assert {ran_on[h.name] for h in plain_hosts if h.name in ran_on} <= {
        both.node_name,
        plain.node_name,
    }, ran_on
    assert {ran_on[h.name] for h in dc2_hosts if h.name in ran_on} <= {
        both.node_name,
        dc2.node_name,
    }, ran_on
    assert all(broker.llen(q) == 0 for q in waiting)
    ledger.assert_at_most_once()
    broker.close()
