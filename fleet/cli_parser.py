"""The command line's grammar: every subcommand, option and default (`build_parser`).

`fleet.cli` runs what is parsed; this module only describes it, and imports nothing
heavy, so ``fleet --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fleet.celery_config import DEFAULT_CONCURRENCY, DEFAULT_POOL, POOLS
from fleet.inventory.hosts import DEFAULT_QUEUE
from fleet.version import __version__

Handler = Callable[[argparse.Namespace], int]


def _common_options(*, on_subcommand: bool) -> argparse.ArgumentParser:
    # Accepted before and after the subcommand. On the subcommand they default to
    # "not given" (SUPPRESS), so `fleet -i FILE hosts` keeps the FILE given first.
    suppress: Any = argparse.SUPPRESS
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-i",
        "--inventory",
        default=suppress if on_subcommand else None,
        help="inventory file (env FLEET_INVENTORY; default ./inventory.yaml)",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=suppress if on_subcommand else False,
        help="show tracebacks of internal errors",
    )
    return common


def build_parser(
    handlers: Mapping[str, Handler],
) -> argparse.ArgumentParser:
    """The parser; each subcommand's `handler` is taken from `handlers` by name."""
    common = _common_options(on_subcommand=True)
    parser = argparse.ArgumentParser(
        prog="fleet",
        description="Run a command on many hosts over SSH and know what happened on each.",
        parents=[_common_options(on_subcommand=False)],
    )
    parser.add_argument(
        "--version", action="version", version=f"fleet {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    hosts = sub.add_parser("hosts", parents=[common], help="list the hosts a pattern selects")
    hosts.add_argument("pattern", nargs="?", help="Ansible-style pattern, e.g. 'web:&prod:!web03'")
    hosts.add_argument("-g", "--group", dest="group", help="same as PATTERN")
    hosts.add_argument("--json", action="store_true", help="one JSON document on stdout")
    hosts.set_defaults(handler=handlers["cmd_hosts"])

    run = sub.add_parser("run", parents=[common], help="run a command on the selected hosts")
    run.add_argument("command", help="shell command to run on each host")
    add_run_options(run)
    run.set_defaults(handler=handlers["cmd_run"])

    runs = sub.add_parser("runs", parents=[common], help="list past runs, newest first")
    runs.add_argument("--limit", type=_positive_int, default=20, help="how many runs (default 20)")
    runs.add_argument("--host", help="only runs that included this host, with its status in each")
    runs.add_argument("--json", action="store_true", help="one JSON document on stdout")
    runs.set_defaults(handler=handlers["cmd_runs"])

    report = sub.add_parser("report", parents=[common], help="show a run's report")
    report.add_argument("run_id", help="the run's id (fleet runs lists them)")
    report.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="a run still going: show its progress until it ends (Ctrl-C detaches again)",
    )
    report.add_argument("--json", action="store_true", help="the JSON report on stdout")
    report.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    report.add_argument(
        "--verbose", "-v", action="store_true", help="show every host's output and a host table"
    )
    report.set_defaults(handler=handlers["cmd_report"])

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a run's unstarted hosts")
    cancel.add_argument("run_id", help="the run's id (fleet runs lists them)")
    cancel.set_defaults(handler=handlers["cmd_cancel"])

    worker = sub.add_parser(
        "worker", parents=[common], help="start a Celery worker (celery -A fleet worker ...)"
    )
    worker.add_argument("-Q", "--queues", default=DEFAULT_QUEUE, help="comma-separated queues")
    worker.add_argument(
        "-P",
        "--pool",
        choices=POOLS,
        default=DEFAULT_POOL,
        help=f"Celery pool (default {DEFAULT_POOL})",
    )
    worker.add_argument(
        "-c",
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"tasks at once: threads, processes or greenlets (default {DEFAULT_CONCURRENCY})",
    )
    worker.add_argument("-n", "--hostname", help="node name, e.g. eu1@%%h")
    worker.add_argument(
        "-l",
        "--loglevel",
        default="INFO",
        help="Celery's log level (default INFO; DEBUG shows SSH detail)",
    )
    worker.set_defaults(handler=handlers["cmd_worker"])

    beat = sub.add_parser(
        "beat", parents=[common], help="fire the inventory's schedules (celery -A fleet beat)"
    )
    beat.add_argument("-l", "--loglevel", default="INFO", help="Celery's log level (default INFO)")
    beat.set_defaults(handler=handlers["cmd_beat"])

    schedules = sub.add_parser(
        "schedules", parents=[common], help="list the inventory's schedules and their last runs"
    )
    schedules.add_argument("--json", action="store_true", help="one JSON document on stdout")
    schedules.set_defaults(handler=handlers["cmd_schedules"])
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs something on hosts (run, script, copy):
    selection, timeouts, deadline, host keys, sudo, environment, report output."""
    parser.add_argument("-g", "--group", required=True, help="pattern selecting the hosts")
    parser.add_argument("--timeout", type=_positive, help="command wall time per host, seconds")
    parser.add_argument("--connect-timeout", type=_positive, help="connect + banner, seconds")
    parser.add_argument(
        "--deadline",
        type=_positive,
        help="whole run; hosts without a result by then are 'lost' (default: from the timeouts)",
    )
    parser.add_argument("--json", action="store_true", help="the JSON report on stdout")
    parser.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    parser.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        default=None,
        help="record unknown host keys on first use (changed keys stay rejected)",
    )
    parser.add_argument("--sudo", action="store_true", help="run through sudo -n")
    parser.add_argument("--sudo-user", help="with --sudo: run as this user")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="environment variable for the command (repeatable)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show every host's output")


def _positive_number(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type: `convert(text)`, refused unless it is above 0."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


_positive_int = _positive_number(int, "a whole number")
_positive = _positive_number(float, "a number of seconds")
