"""The long-running side of the command line: ``fleet worker`` and ``fleet beat`` (each
becomes the ``celery -A fleet ...`` command a Celery user types), ``fleet schedules``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from fleet.errors import EXIT_OK, FleetError, UsageError
from fleet.settings import Settings


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return Settings.load(inventory=getattr(args, "inventory", None), **overrides)


def cmd_beat(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.is_embedded:
        raise UsageError(
            "no broker configured: set FLEET_BROKER_URL (e.g. redis://host:6379/0) for beat "
            "to send runs to"
        )
    settings.require_result_backend()
    _check_signing(settings, worker=False)
    from fleet.inventory.loader import load_inventory

    # a bad inventory: one message here, exit 2
    load_inventory(settings.inventory, max_bytes=settings.inventory_max_bytes)
    _exec_celery(["beat", "-l", args.loglevel], args)


def cmd_schedules(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from fleet.inventory.loader import load_inventory

    settings = _settings(args)
    inventory = load_inventory(settings.inventory, max_bytes=settings.inventory_max_bytes)
    from fleet.beat import check_schedules, next_firing
    from fleet.session import RunSession

    check_schedules(inventory)
    now = datetime.now(UTC)
    rows = []
    with RunSession(settings) as session:
        for item in inventory.schedules.values():
            state = session.store.beat_state(item.name)
            last = None
            if state.last_run_id is not None:
                try:
                    report = session.report(state.last_run_id)
                    last = {"run_id": state.last_run_id, "state": report.run.state,
                            "counts": report.counts()}  # fmt: skip
                except FleetError:  # expired from the history
                    last = {"run_id": state.last_run_id, "state": "expired", "counts": {}}
            rows.append(
                item.to_dict()
                | {
                    "when": item.when,
                    "next_firing": next_firing(item, state.last_slot, now).isoformat(),
                    "last_run": last,
                    "skipped": state.skipped,
                }
            )
    if args.json:
        from fleet.report.contract import dumps_json

        sys.stdout.write(dumps_json(rows))
        return EXIT_OK
    from fleet.report import render_schedules

    sys.stdout.write(render_schedules(rows))
    if not rows:
        print(f"no schedules in {settings.inventory}", file=sys.stderr)
    return EXIT_OK


def _check_signing(settings: Settings, *, worker: bool) -> None:
    """A half signing set-up: one line and exit 2 here, before Celery starts."""
    from fleet.signing import check_worker_signing, signing_config

    config = signing_config(settings)
    if worker and config is not None:
        check_worker_signing(config)


def _exec_celery(argv: list[str], args: argparse.Namespace) -> NoReturn:
    """Become ``python -m celery -A fleet ARGV``: the very command a Celery user types, in
    a fresh interpreter (Celery patches gevent/eventlet in before anything imports
    socket, which this process already did)."""
    if getattr(args, "inventory", None):
        os.environ["FLEET_INVENTORY"] = args.inventory
    sys.stdout.flush()
    sys.stderr.flush()
    full = [sys.executable, "-m", "celery", "-A", "fleet", *argv]
    os.execv(sys.executable, full)  # noqa: S606  (our own interpreter, fixed argv)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.is_embedded:
        raise UsageError(
            "no broker configured: set FLEET_BROKER_URL (e.g. redis://host:6379/0) to run a worker"
        )
    settings.require_result_backend()
    _check_signing(settings, worker=True)
    argv = ["worker", "-Q", args.queues, "-P", args.pool, "-c", str(args.concurrency)]
    argv += ["-l", args.loglevel] + (["-E"] if args.events else [])
    if args.hostname:
        argv += ["-n", args.hostname]
    _exec_celery(argv, args)
