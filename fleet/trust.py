"""What a worker allows, whatever a task message asks: the broker is not trusted.

Anyone who can write to the broker can write a task message (SaltStack's CVE-2020-11651
is what happens when a bus is believed). So a distributed worker decides from its own
settings (its environment, `fleet.worker.worker_settings`), never from the message:

- ``connection: local`` runs a command as the worker's own user on the worker's own
  machine: only where ``FLEET_ALLOW_LOCAL`` is on;
- ``password_env`` and ``become_password_env`` may only name a variable the worker
  declares in ``FLEET_SECRET_ENV`` (names, or prefixes ending in ``*``): otherwise a
  message could have any variable of the worker's environment sent to any server;
- trust on first use (``accept_new_host_keys``) happens only where the worker allows it
  (``FLEET_ACCEPT_NEW_HOST_KEYS``); a message can make a worker stricter, never laxer.

In embedded mode there is no broker: the submitting process is the worker, and its
own options are taken as they are. Pure functions: no Celery, no I/O.
"""

from __future__ import annotations

from dataclasses import replace

from fleet.command import ExecOptions
from fleet.inventory.hosts import Host
from fleet.results import HostResult, Status, utc_now
from fleet.settings import Settings


def declared_secrets(settings: Settings) -> tuple[str, ...]:
    """The entries of ``FLEET_SECRET_ENV``: names, or prefixes ending in ``*``."""
    return tuple(p.strip() for p in settings.secret_env.split(",") if p.strip())


def is_declared(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def refusal(host: Host, settings: Settings) -> str | None:
    """Why this worker will not run anything on `host`, or None."""
    if settings.is_embedded:
        return None
    if host.is_local and not settings.allow_local:
        return (
            "connection: local is not allowed on this worker (it would run as the "
            "worker's user on the worker's machine); set FLEET_ALLOW_LOCAL=1 on workers "
            "meant to run local hosts"
        )
    patterns = declared_secrets(settings)
    for key, name in (("password_env", host.password_env),
                      ("become_password_env", host.become_password_env)):  # fmt: skip
        if name and not is_declared(name, patterns):
            return (
                f"{key} {name!r} is not a secret this worker declares: list it in "
                "FLEET_SECRET_ENV on the worker (names, or prefixes ending in *)"
            )
    return None


def refused_result(host: Host, reason: str) -> HostResult:
    """The result of a host the worker refused: it never ran, nothing was contacted."""
    return HostResult(
        host=host.name,
        status=Status.ERROR,
        address=host.address,
        error=f"refused by the worker: {reason}",
        finished_at=utc_now(),
    )


def allowed_options(options: ExecOptions, settings: Settings) -> ExecOptions:
    """`options` with what the worker does not allow taken back (trust on first use)."""
    if settings.is_embedded or not options.accept_new_host_keys:
        return options
    return replace(options, accept_new_host_keys=settings.accept_new_host_keys)
