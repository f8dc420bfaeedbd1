"""The Celery app follows the settings it is given, and Celery is configured safely."""

from __future__ import annotations

import celeryconfig
from fleet.celery import app, app_for
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


def test_celery_configuration_is_json_only_at_most_once_and_observable() -> None:
    assert celeryconfig.accept_content == ["json"]
    assert celeryconfig.result_accept_content == ["json"]
    assert celeryconfig.task_serializer == celeryconfig.result_serializer == "json"
    assert celeryconfig.task_acks_late is False
    assert celeryconfig.worker_prefetch_multiplier == 1
    assert celeryconfig.worker_send_task_events is True
    assert celeryconfig.broker_transport_options["visibility_timeout"] >= 11 * 3600
    assert celeryconfig.result_expires == Settings().retention


def test_task_messages_carry_no_paths_of_the_submitters_machine() -> None:
    import time

    from fleet.execute import ExecOptions
    from fleet.hosts import Host
    from fleet.results import RunRecord, utc_now
    from fleet.runs import RunRequest, build_canvas

    options = ExecOptions(known_hosts="/home/op/kh", ssh_config="/home/op/cfg", command_timeout=7)
    request = RunRequest("uptime", "web", (Host("web01", "10.0.0.1"),), options)
    run = RunRecord("r1", "uptime", "web", ("web01",), utc_now(), time.time() + 60)
    (member,) = build_canvas(run, request, embedded=False).tasks
    sent = member.args[3]
    assert "known_hosts" not in sent and "ssh_config" not in sent
    assert "user_known_hosts" not in sent and sent["command_timeout"] == 7
