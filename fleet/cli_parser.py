"""The command line's grammar: every subcommand, option and default (`build_parser`).

`fleet.cli` runs what is parsed; this module only describes it, and imports nothing
heavy, so ``fleet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from fleet.celery_config import DEFAULT_CONCURRENCY, DEFAULT_POOL, POOLS
from fleet.errors import UsageError
from fleet.inventory.hosts import DEFAULT_QUEUE
from fleet.rollout import BATCH_ORDERS, Size, parse_size
from fleet.version import __version__

Handler = Callable[[argparse.Namespace], int]


def _common_options(*, on_subcommand: bool) -> _Parser:
    # Accepted before and after the subcommand. On the subcommand they default to
    # "not given" (SUPPRESS), so `fleet -i FILE hosts` keeps the FILE given first.
    suppress: Any = argparse.SUPPRESS
    common = _Parser(add_help=False)
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
    parser = _Parser(
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

    audit = sub.add_parser("audit", parents=[common], help="who submitted or cancelled runs")
    audit.add_argument(
        "--since", metavar="WHEN", help="only entries since: 30m, 12h, 1d, or an ISO time (UTC)"
    )
    audit.add_argument(
        "--limit", type=_positive_int, default=100, help="how many entries (default 100)"
    )
    audit.add_argument("--json", action="store_true", help="one JSON document on stdout")
    audit.set_defaults(handler=handlers["cmd_audit"])

    add_transfer_parsers(sub, common, handlers)

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
        "-E",
        "--task-events",
        dest="events",
        action="store_true",
        help="send Celery task events (for Flower, celery events); off: 3 fewer Redis "
        "messages per host",
    )
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

    keys = sub.add_parser("keys", help="message signing: create a key and its certificate")
    keys_sub = keys.add_subparsers(title="keys commands", metavar="ACTION", required=True)
    init = keys_sub.add_parser("init", help="write DIR/NAME.key (0600) and DIR/NAME.pem")
    init.add_argument("directory", metavar="DIR", help="where to write them (created 0700)")
    init.add_argument("--name", default="fleet", help="file names and the certificate's CN")
    init.set_defaults(handler=handlers["cmd_keys_init"])
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
        help="environment variable for the command (repeatable); a plain value, not a "
        "secret: kept out of messages, records and the remote process list, but use "
        "--env-from for secrets",
    )
    parser.add_argument(
        "--env-from",
        action="append",
        default=[],
        metavar="K=WORKER_VAR",
        help="environment variable for the command, its value taken from the worker's "
        "variable WORKER_VAR, which the worker must declare in FLEET_SECRET_ENV (repeatable)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show every host's output")
    rolling = parser.add_argument_group("rolling runs")
    rolling.add_argument(
        "--batch",
        type=_size("--batch"),
        metavar="N|N%",
        help="run the hosts in batches of N (or N%% of them), one batch after another",
    )
    rolling.add_argument(
        "--batch-order",
        choices=BATCH_ORDERS,
        default="inventory",
        help="which hosts go first: inventory order (default) or random",
    )
    rolling.add_argument(
        "--max-fail",
        type=_size("--max-fail"),
        metavar="N|N%",
        help="with --batch: once N hosts (or N%% of them) are not ok, start no further "
        "batch; the rest end 'skipped'",
    )
    rolling.add_argument(
        "--fanout",
        "-f",
        type=_positive_int,
        metavar="N",
        help="at most N hosts of this run at once, across all workers",
    )


def _size(option: str) -> Callable[[str], Size]:
    """An argparse type for `N` or `N%` (`fleet.rollout.parse_size`)."""

    def parse(text: str) -> Size:
        try:
            return parse_size(text, option)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{option} ")) from None

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (and where to read more) instead of the
    whole usage text: the line names the option and the value."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_transfer_parsers(sub: Any, common: argparse.ArgumentParser, handlers: Any) -> None:
    """``fleet script``, ``fleet copy``, ``fleet fetch`` (handlers in `fleet.cli_transfer`)."""
    # Its own parser class (argparse has no per-subcommand choice but this one): what
    # follows `--` is the script's, also after options.
    default_class, sub._parser_class = sub._parser_class, _ScriptParser
    try:
        script = sub.add_parser(
            "script", parents=[common], help="upload a local script to each host and run it"
        )
    finally:
        sub._parser_class = default_class
    script.add_argument(
        "path", type=Path, help="the local script (its #! line picks the interpreter)"
    )
    script.add_argument("script_args", nargs="*", metavar="ARG", help="arguments, after --")
    add_run_options(script)
    script.set_defaults(handler=handlers["cmd_script"])

    copy = sub.add_parser("copy", parents=[common], help="put a local file on each host (SFTP)")
    copy.add_argument("src", type=Path, help="the local file")
    copy.add_argument("dest", help="remote path, or an existing remote directory")
    copy.add_argument(
        "--mode",
        type=_mode,
        default=None,
        help="octal mode of the file (default: an existing file keeps its mode and owner; "
        "a new one gets 0644)",
    )
    add_run_options(copy)
    copy.set_defaults(handler=handlers["cmd_copy"])

    fetch = sub.add_parser(
        "fetch", parents=[common], help="get a remote file from each host into LOCALDIR/HOST/"
    )
    fetch.add_argument("remote", help="the remote file")
    fetch.add_argument("localdir", type=Path, help="where LOCALDIR/HOST/NAME are written")
    add_run_options(fetch)
    fetch.set_defaults(handler=handlers["cmd_fetch"])


class _ScriptParser(_Parser):
    """``fleet script PATH [options] -- ARG ...``: every word after the first ``--`` is a
    script argument, wherever the options stand (plain argparse refuses them once PATH
    has been taken)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(args or [])
        tail: list[str] = []
        if "--" in words:
            cut = words.index("--")
            words, tail = words[:cut], words[cut + 1 :]
        parsed, extra = super().parse_known_args(words, namespace)
        parsed.script_args = [*(getattr(parsed, "script_args", None) or []), *tail]
        return parsed, extra


def _mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an octal mode such as 0644, got {text!r}"
        ) from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"expected an octal mode 0000-7777, got {text!r}")
    return value


def _positive_number(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type: `convert(text)`, refused unless it is above 0."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


_positive_int = _positive_number(int, "a whole number")
_positive = _positive_number(float, "a number of seconds")
