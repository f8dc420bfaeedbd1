"""A run's environment variables: plain values staged by run id, secrets by reference.

- ``--env NAME=VALUE`` (and a schedule's or the API's ``env``): plain values, not meant
  for secrets but kept out of sight all the same. The submitter stages them in the run
  store under the run's id (`stage_run_env`), for no longer than the run may last; the
  task message and the run record carry the names only (`fleet.command.REDACTED`
  values); each worker reads them by run id when it runs a host (`run_options`), and the
  run's end deletes them (`fleet.lifecycle.finalize_run`). On the host they arrive over
  the command's stdin, never in its argv (`fleet.stdin_env`).
- ``--env-from NAME=WORKER_VAR`` and the inventory's ``env_from: {NAME: WORKER_VAR}``:
  references, resolved on the worker from its own environment (`resolve_env_from`),
  only for variables it declares in ``FLEET_SECRET_ENV`` (`env_from_refusal`: the rule of
  ``password_env``, `fleet.trust`). In embedded mode the submitting process is the worker
  and takes its own references as they are.

Precedence, lowest first: the host's ``env``, its ``env_from``, ``--env``,
``--env-from``; fleet's own ``FLEET_RUN_ID`` and ``FLEET_HOST`` always win.
No Celery here: plain functions over a run store and an environment mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from fleet.command import ExecOptions
from fleet.inventory.hosts import Host
from fleet.results import HostResult, Status, utc_now
from fleet.settings import Settings
from fleet.stdin_env import INLINE_ENV
from fleet.store.protocol import RunStore
from fleet.trust import declared_secrets, is_declared

#: Staged values outlive the run's deadline by this much (seconds): a host that starts
#: just before the deadline still finds them; the run's end deletes them earlier.
STAGE_MARGIN_S = 60.0


def stage_run_env(store: RunStore, run_id: str, options: ExecOptions, deadline_s: float) -> None:
    """Keep `options.env`'s values in `store` for the run's workers, for the run's
    `deadline_s` (seconds) and a margin. Nothing when there are none. Raises `BackendError`."""
    if options.env:
        store.stage_env(run_id, dict(options.env), deadline_s + STAGE_MARGIN_S)


def _error(host: Host, message: str) -> HostResult:
    return HostResult(
        host=host.name,
        status=Status.ERROR,
        address=host.address,
        error=message,
        finished_at=utc_now(),
    )


def run_options(
    store: RunStore, run_id: str, host: Host, options: ExecOptions
) -> ExecOptions | HostResult:
    """The options `host`'s command runs with in this run: the values of the names in
    `options.env` read from `store` (whatever a message says they are), and fleet's own
    `FLEET_RUN_ID` and `FLEET_HOST`. An `error` result when values are missing (the run
    ended and dropped them, or they expired): the host is not contacted. Raises
    `BackendError`."""
    env: dict[str, str] = {}
    if options.env:
        staged = store.staged_env(run_id) or {}
        missing = [name for name in options.env if name not in staged]
        if missing:
            return _error(
                host,
                f"the run's --env value(s) of {', '.join(missing)} are no longer in the run "
                "store (the run ended, or they expired); not run",
            )
        env = {name: staged[name] for name in options.env}
    env.update(FLEET_RUN_ID=run_id, FLEET_HOST=host.name)
    return replace(options, env=env)


def env_from_refusal(host: Host, options: ExecOptions, settings: Settings) -> str | None:
    """Why this worker will not resolve `host`'s or the run's references, or None: each
    must name a variable the worker declares in ``FLEET_SECRET_ENV``, or a message could
    have any variable of the worker's environment (a broker URL, another secret) sent to
    any host."""
    if settings.is_embedded:
        return None
    patterns = declared_secrets(settings)
    for where, mapping in (("env_from", host.env_from), ("--env-from", options.env_from)):
        for name, variable in mapping.items():
            if not is_declared(variable, patterns):
                return (
                    f"{where} {name}={variable} names {variable!r}, which is not a secret this "
                    "worker declares: list it in FLEET_SECRET_ENV on the worker (names, or "
                    "prefixes ending in *)"
                )
    return None


def resolve_env_from(
    host: Host, options: ExecOptions, environ: Mapping[str, str]
) -> ExecOptions | HostResult:
    """`options` with the references of `host.env_from` and `options.env_from` resolved
    from `environ` (the worker's environment) into `options.env`, by the precedence
    above. An `error` result naming the first variable not set there: the host is not
    contacted. Call `env_from_refusal` first."""
    if not host.env_from and not options.env_from:
        return options
    resolved: list[dict[str, str]] = []
    for where, mapping in (("env_from", host.env_from), ("--env-from", options.env_from)):
        values: dict[str, str] = {}
        for name, variable in mapping.items():
            value = environ.get(variable)
            if value is None:
                return _error(
                    host,
                    f"{where} {name}={variable} names {variable!r}, which is not set on the worker",
                )
            values[name] = value
        resolved.append(values)
    env = {**resolved[0], **options.env, **resolved[1]}
    env.update({name: options.env[name] for name in INLINE_ENV if name in options.env})
    return replace(options, env=env, env_from={})
