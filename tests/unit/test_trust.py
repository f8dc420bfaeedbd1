"""fleet.trust: what a distributed worker allows whatever a message asks (pure)."""

from __future__ import annotations

import pytest

from fleet.command import ExecOptions
from fleet.inventory.hosts import Host
from fleet.results import Status
from fleet.settings import Settings
from fleet.trust import allowed_options, is_declared, refusal, refused_result

WORKER = Settings.load(env={"FLEET_BROKER_URL": "redis://127.0.0.1:1/0"})
EMBEDDED = Settings.load(env={})


def worker(**env: str) -> Settings:
    return Settings.load(env={"FLEET_BROKER_URL": "redis://127.0.0.1:1/0", **env})


def test_local_hosts_run_only_where_allowed() -> None:
    local = Host("l", "localhost", connection="local")
    assert "FLEET_ALLOW_LOCAL" in (refusal(local, WORKER) or "")
    assert refusal(local, worker(FLEET_ALLOW_LOCAL="1")) is None
    assert refusal(local, EMBEDDED) is None  # no broker: nothing to distrust


@pytest.mark.parametrize("key", ["password_env", "become_password_env"])
def test_secret_references_must_be_declared_by_the_worker(key: str) -> None:
    host = Host("h", "10.0.0.1", **{key: "AWS_SECRET_ACCESS_KEY"})
    reason = refusal(host, worker(FLEET_SECRET_ENV="DB_PASS,DEPLOY_*"))
    assert reason is not None and key in reason and "FLEET_SECRET_ENV" in reason
    ok = Host("h", "10.0.0.1", **{key: "DEPLOY_PW"})
    assert refusal(ok, worker(FLEET_SECRET_ENV="DB_PASS,DEPLOY_*")) is None
    assert refusal(host, WORKER) is not None  # nothing declared: nothing may be read
    assert refusal(host, EMBEDDED) is None


def test_declared_patterns() -> None:
    assert is_declared("DB_PASS", ("DB_PASS",)) and not is_declared("DB_PASSWORD", ("DB_PASS",))
    assert is_declared("DEPLOY_X", ("DEPLOY_*",)) and not is_declared("DEPLO", ("DEPLOY_*",))
    assert not is_declared("ANY", ())


def test_a_message_cannot_turn_on_trust_on_first_use() -> None:
    asked = ExecOptions(accept_new_host_keys=True)
    assert not allowed_options(asked, WORKER).accept_new_host_keys
    allowing = worker(FLEET_ACCEPT_NEW_HOST_KEYS="1")
    assert allowed_options(asked, allowing).accept_new_host_keys
    assert not allowed_options(ExecOptions(), allowing).accept_new_host_keys  # stricter: kept
    assert allowed_options(asked, EMBEDDED).accept_new_host_keys


def test_a_refused_host_is_an_error_result_that_never_ran() -> None:
    result = refused_result(Host("h", "10.0.0.1"), "because")
    assert result.status is Status.ERROR and result.error == "refused by the worker: because"
    assert result.started_at is None and result.exit_code is None
