"""The Python API, for programs (a web app's view, a script)::

    import fleet
    handle = fleet.run("uptime", "web", inventory="inventory.yaml", timeout=30)
    report = handle.wait()
    for result in report.failed:
        print(result.host, result.status, result.error)

Raises the same typed errors as the CLI reports (`fleet.errors`): `InventoryError`,
`PatternError`, `BackendError`. Host trouble is never raised: it is in the report
(`report.raise_on_error()` opts in).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fleet.command import ExecOptions
from fleet.inventory.loader import select_hosts
from fleet.lifecycle import RunRequest, chosen_timeouts, fit_timeouts
from fleet.results import RunReport
from fleet.rollout import Rollout, parse_size
from fleet.session import RunSession
from fleet.settings import DEFAULTS, Settings


class RunHandle:
    """A submitted run. In embedded mode its in-process worker lives until `wait()` returns."""

    def __init__(self, session: RunSession, run_id: str) -> None:
        self._session = session
        self.run_id = run_id

    def wait(self, timeout: float | None = None) -> RunReport | None:
        """Block until every host has a status; None if `timeout` passes first."""
        report = self._session.follow(self.run_id, timeout=timeout)
        if report is not None:
            self._session.close()
        return report

    def report(self) -> RunReport:
        """The report as it stands now (complete once the run is finished)."""
        return self._session.report(self.run_id)

    def cancel(self) -> bool:
        return self._session.cancel(self.run_id)

    def close(self) -> None:
        """Release the run store's connections (and an embedded run's worker: its run
        stops). `wait()` closes once the run is finished; a web app that only submits
        calls this, or uses the handle as a context manager."""
        self._session.close()

    def __enter__(self) -> RunHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(
    command: str,
    pattern: str,
    *,
    inventory: str | Path | None = None,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    deadline: float | None = None,
    accept_new_host_keys: bool | None = None,
    sudo: bool = False,
    env: Mapping[str, str] | None = None,
    env_from: Mapping[str, str] | None = None,
    batch: int | str | None = None,
    max_fail: int | str | None = None,
    fanout: int | None = None,
    settings: Settings | None = None,
) -> RunHandle:
    """Submit `command` on the hosts `pattern` selects; return a handle to wait on.

    `timeout`, `connect_timeout`, `deadline`: seconds. `env`: plain values (not stored,
    not in any argv); `env_from`: NAME -> a variable of each worker's environment that
    it declares in FLEET_SECRET_ENV. `batch`/`max_fail`: a host count or ``"N%"``, as
    ``--batch``/``--max-fail`` (`fleet.rollout`); `fanout`: hosts in flight at most.
    Raises `FleetError` (`UsageError`, `InventoryError`, `BackendError`, ...).
    """
    settings = settings or Settings.load(
        inventory=str(inventory) if inventory is not None else None,
        command_timeout=timeout,
        connect_timeout=connect_timeout,
        deadline=deadline,
        accept_new_host_keys=accept_new_host_keys,
    )
    hosts = select_hosts(
        settings.inventory,
        pattern,
        max_bytes=settings.inventory_max_bytes,
        implicit_file=settings.inventory == DEFAULTS.inventory,
    )
    options = ExecOptions.from_settings(
        settings,
        become=True if sudo else None,
        env=dict(env or {}),
        env_from=dict(env_from or {}),
    )
    rollout = Rollout(
        batch=None if batch is None else parse_size(str(batch), "batch"),
        max_fail=None if max_fail is None else parse_size(str(max_fail), "max_fail"),
        fanout=fanout,
    )
    given = {"command_timeout"} if timeout is not None else set()
    given |= {"connect_timeout"} if connect_timeout is not None else set()
    options = fit_timeouts(options, settings.deadline, chosen_timeouts(settings, given))
    session = RunSession(settings).__enter__()
    try:
        request = RunRequest(command, pattern, hosts, options, settings.deadline, rollout=rollout)
        record = session.submit(request)
    except BaseException:
        session.close()
        raise
    return RunHandle(session, record.run_id)
