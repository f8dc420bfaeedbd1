"""Fixtures starting real services for integration tests (all stopped by PID at the end).

Every test under tests/integration is marked `integration`. When a service binary is
missing the test is skipped with a one-line reason, unless ``CI`` or
``FLEET_REQUIRE_INTEGRATION=1`` is set: then it fails loudly.

Addresses: sshd hosts use 127.0.0.2 upward (session fleet: h02-h07; `make_ssh_fleet`
fleets continue from h08), stubs use 127.0.1.x.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness import procs
from tests.harness.ledger import Ledger
from tests.harness.rabbitmq import RabbitMQServer, rabbitmq_binary
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import MakeFleet, SSHFleet
from tests.harness.stubs import BannerStaller, Endpoint, HungListener
from tests.harness.stubs import refused_port as _refused
from tests.harness.workers import CeleryWorker, StartWorker, celery_app_present

# Read once at import: the autouse fixture clears FLEET_* variables for each test.
REQUIRE_SERVICES = bool(os.environ.get("CI")) or os.environ.get("FLEET_REQUIRE_INTEGRATION") == "1"
SESSION_FLEET_SIZE = 6
_INTEGRATION_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def require_binary(name: str, package: str) -> str:
    """Path of `name`; skip (or fail under CI) when it is not installed."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        reason = f"{name} not installed (Debian package {package}; scripts/test installs it)"
        if REQUIRE_SERVICES:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


def require_celery_app() -> None:
    if not celery_app_present():
        reason = "fleet/celery.py not there yet: no Celery app to run workers with"
        if REQUIRE_SERVICES:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _stop_everything_at_end() -> Iterator[None]:
    # Belt and braces: fixtures stop what they start, this catches anything leaked.
    yield
    procs.stop_all()


def _serve_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_binary("redis-server", "redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session. Tests that stop or restart Redis use `fresh_redis`."""
    yield from _serve_redis(tmp_path_factory)


@pytest.fixture
def fresh_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test's own (free to kill or restart)."""
    yield from _serve_redis(tmp_path_factory)


@pytest.fixture(scope="session")
def rabbitmq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """One private rabbitmq-server for the session; tests take a vhost of their own."""
    if rabbitmq_binary() is None:
        reason = "rabbitmq-server not installed (Debian package rabbitmq-server)"
        if REQUIRE_SERVICES:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    server = RabbitMQServer(tmp_path_factory.mktemp("rabbitmq"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def rabbit_vhost(rabbitmq_server: RabbitMQServer) -> str:
    """The AMQP URL of a fresh vhost on the session's RabbitMQ."""
    return rabbitmq_server.add_vhost(f"fleet-test-{os.urandom(4).hex()}")


@pytest.fixture(scope="session")
def ssh_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHFleet]:
    """Six sshd hosts (h02-h07 on 127.0.0.2-7). Do not kill or re-key them: use
    `make_ssh_fleet` for tests that disturb hosts."""
    require_binary("sshd", "openssh-server")
    fleet = SSHFleet(tmp_path_factory.mktemp("sshd"), count=SESSION_FLEET_SIZE)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def make_ssh_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeFleet]:
    """`make_ssh_fleet(n, own_key=("h09",))`: a private fleet of `n` hosts, stopped after
    the test. Hosts are numbered after the session fleet's, and after earlier fleets of
    the same test, so names and addresses never overlap within a test."""
    require_binary("sshd", "openssh-server")
    fleets: list[SSHFleet] = []
    next_index = [SESSION_FLEET_SIZE]

    def make(count: int = 6, **kwargs: Any) -> SSHFleet:
        fleet = SSHFleet(
            tmp_path_factory.mktemp("sshd"), count=count, first=next_index[0], **kwargs
        )
        next_index[0] += count
        fleets.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.stop()


@pytest.fixture
def refused_port() -> Endpoint:
    return _refused("127.0.1.1")


@pytest.fixture
def hung_listener() -> Iterator[HungListener]:
    stub = HungListener("127.0.1.2")
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture
def banner_staller() -> Iterator[BannerStaller]:
    stub = BannerStaller("127.0.1.3")
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger")


@pytest.fixture
def start_worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartWorker]:
    """`start_worker(queues=("fleet",), name=None, concurrency=4, env=None)`.

    Unless `env` says otherwise, the worker uses the session `redis_server` as broker and
    result backend and the session `ssh_fleet`'s known_hosts (each started on first use).
    Every worker started is stopped at teardown, also when the test fails.
    """
    require_celery_app()
    workers: list[CeleryWorker] = []

    def start(
        queues: Sequence[str] = ("fleet",),
        name: str | None = None,
        concurrency: int = 4,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> CeleryWorker:
        full_env = dict(env or {})
        if "FLEET_BROKER_URL" not in full_env:
            server: RedisServer = request.getfixturevalue("redis_server")
            full_env["FLEET_BROKER_URL"] = server.url
            full_env.setdefault("FLEET_RESULT_BACKEND", server.url)
        if "FLEET_KNOWN_HOSTS" not in full_env:
            fleet: SSHFleet = request.getfixturevalue("ssh_fleet")
            full_env["FLEET_KNOWN_HOSTS"] = str(fleet.known_hosts)
        worker = CeleryWorker(
            full_env,
            queues=queues,
            name=name,
            concurrency=concurrency,
            log_dir=tmp_path / "workers",
            **kwargs,
        )
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in reversed(workers):
            worker.stop()
