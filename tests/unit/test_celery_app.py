"""The Celery app follows the settings it is given, and Celery is configured safely."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fleet import celery_config
from fleet.celery import app, app_for, create_app
from fleet.errors import ConfigError
from fleet.settings import Settings


def test_settings_matching_the_environment_use_the_module_app() -> None:
    assert app_for(Settings.load()) is app  # tests run with no broker: embedded


def test_explicit_settings_get_an_app_of_their_own_with_fleets_tasks() -> None:
    settings = Settings.load(broker_url="redis://127.0.0.1:1/3")
    other = app_for(settings)
    assert other is not app and app_for(settings) is other
    assert other.conf.broker_url == "redis://127.0.0.1:1/3"
    assert other.conf.result_backend == "redis://127.0.0.1:1/3"
    import fleet.tasks  # noqa: F401  (what a worker's loader does with `include`)

    other.finalize()
    assert {"fleet.run_on_host", "fleet.aggregate"} <= set(other.tasks)


def test_celery_configuration_is_json_only_one_message_per_slot_and_observable() -> None:
    conf = app_for(Settings.load(broker_url="redis://127.0.0.1:1/5")).conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"
    assert conf.task_acks_late is False and conf.worker_disable_prefetch is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_reject_on_worker_lost is False
    assert conf.worker_send_task_events is False  # only with -E: 3 publishes per host
    assert conf.broker_transport_options["visibility_timeout"] >= 12 * 3600
    # No unacked hash: two Redis round trips per task saved, and nothing comes back.
    assert conf.broker_transport_options["ack_emulation"] is False
    assert conf.result_expires == Settings().retention
    # The pool is chosen on the command line (fleet worker -P), never in the config:
    # a config value would beat an explicit `celery -A fleet worker -P prefork`.
    assert "worker_pool" not in celery_config.DEFAULTS
    assert conf.worker_pool == "prefork"  # Celery's own default, untouched


def test_a_rabbitmq_app_acks_late_with_one_message_per_slot() -> None:
    conf = app_for(
        Settings.load(broker_url="amqp://127.0.0.1:1//", result_backend="redis://127.0.0.1:1/0")
    ).conf
    assert conf.task_acks_late is True and conf.worker_prefetch_multiplier == 1
    assert conf.worker_disable_prefetch is False  # Redis only: Celery ignores it elsewhere


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        (None, "memory"),
        ("memory://", "memory"),
        ("redis://h:6379/0", "redis"),
        ("rediss://h:6380/0", "redis"),
        ("amqp://h//", "amqp"),
        ("pyamqp://h//", "amqp"),
    ],
)
def test_transport_of_a_broker_url(url: str | None, transport: str) -> None:
    assert celery_config.transport_of(url) == transport


def test_no_site_settings_means_fleets_own() -> None:
    config, refused = celery_config.resolve({}, result_expires=600)
    assert refused == []
    assert config["accept_content"] == ["json"] and config["result_expires"] == 600


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("accept_content", ["pickle", "json"]),
        ("accept_content", []),
        ("result_accept_content", ["yaml"]),
        ("task_serializer", "pickle"),
        ("result_serializer", "msgpack"),
        ("event_serializer", "pickle"),
        ("worker_prefetch_multiplier", 4),
        ("task_reject_on_worker_lost", True),
        ("task_always_eager", True),
        ("result_expires", 60),
    ],
)
def test_a_weaker_safety_setting_is_not_taken_and_named(name: str, value: object) -> None:
    _refused_on("redis", name, value)
    _refused_on("amqp", name, value)


@pytest.mark.parametrize(
    ("transport", "name", "value"),
    [
        ("redis", "task_acks_late", True),
        ("redis", "worker_disable_prefetch", False),
        ("amqp", "task_acks_late", False),
    ],
)
def test_broker_fairness_settings_cannot_be_dropped(
    transport: str, name: str, value: object
) -> None:
    _refused_on(transport, name, value)


def _refused_on(transport: str, name: str, value: object) -> None:
    config, refused = celery_config.resolve({name: value}, result_expires=3600, transport=transport)
    assert [r.name for r in refused] == [name]
    assert config[name] != value
    line = celery_config.refusal_line(refused)
    assert "\n" not in line and name in line and repr(value) in line


def test_transport_options_merge_but_the_visibility_timeout_cannot_drop() -> None:
    site = {"broker_transport_options": {"visibility_timeout": 60, "socket_timeout": 30.0}}
    config, refused = celery_config.resolve(site, result_expires=3600)
    options = config["broker_transport_options"]
    assert options["socket_timeout"] == 30.0
    assert options["visibility_timeout"] == celery_config.VISIBILITY_TIMEOUT_S
    assert [r.name for r in refused] == ["broker_transport_options.visibility_timeout"]


def test_stricter_or_unrelated_site_settings_are_taken() -> None:
    site = {
        "accept_content": ["application/json"],
        "result_expires": 10 * 86400,
        "worker_send_task_events": True,
        "broker_transport_options": {"visibility_timeout": 24 * 3600},
    }
    config, refused = celery_config.resolve(site, result_expires=7 * 86400)
    assert refused == []
    assert config["worker_send_task_events"] is True
    assert config["result_expires"] == 10 * 86400
    assert config["broker_transport_options"]["visibility_timeout"] == 24 * 3600


def _site_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> str:
    name = f"site_celeryconfig_{abs(hash(text))}"
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_site_module_settings_are_read_and_a_broken_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _site_module(tmp_path, monkeypatch, "import os\nworker_send_task_events = False\n")
    assert celery_config.load_site_settings(good) == {"worker_send_task_events": False}
    assert celery_config.load_site_settings("no_such_module_here") == {}
    bad = _site_module(tmp_path, monkeypatch, "accept_content = [\n")
    with pytest.raises(ConfigError, match=f"{bad}.py: cannot load"):
        celery_config.load_site_settings(bad)


def test_a_celeryconfig_in_the_working_directory_cannot_weaken_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "celeryconfig.py").write_text("accept_content = ['pickle', 'json']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "celeryconfig", raising=False)
    site_app = create_app(Settings.load(broker_url="redis://127.0.0.1:1/0"))
    assert site_app.conf.accept_content == ["json"]


def test_task_messages_carry_no_paths_of_the_submitters_machine() -> None:
    import time

    from fleet.command import ExecOptions
    from fleet.inventory.hosts import Host
    from fleet.lifecycle import RunRequest
    from fleet.results import RunRecord, utc_now
    from fleet.runs import build_canvas

    options = ExecOptions(known_hosts="/home/op/kh", ssh_config="/home/op/cfg", command_timeout=7)
    request = RunRequest("uptime", "web", (Host("web01", "10.0.0.1"),), options)
    run = RunRecord("r1", "uptime", "web", ("web01",), utc_now(), time.time() + 60)
    (member,) = build_canvas(run, request, embedded=False).tasks
    sent = member.args[3]
    assert "known_hosts" not in sent and "ssh_config" not in sent
    assert "user_known_hosts" not in sent and sent["command_timeout"] == 7
