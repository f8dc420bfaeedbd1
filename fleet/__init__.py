"""fleet: run a command on many hosts over SSH, one Celery task per host.

The public Python API is what ``__all__`` lists; every other module is internal.

    import fleet
    with fleet.run("uptime", "web", inventory="inventory.yaml") as handle:
        report = handle.wait()
    for result in report.failed:
        print(result.host, result.status, result.error)

``fleet.run`` (and Celery behind it) is loaded lazily, so that importing ``fleet``
(and ``fleet --help``) never pulls in Celery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleet.errors import FleetError
from fleet.results import HostResult, RunReport, Status
from fleet.version import __version__ as __version__

if TYPE_CHECKING:
    from fleet.api import RunHandle, run

__all__ = ["FleetError", "HostResult", "RunHandle", "RunReport", "Status", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "RunHandle"):
        from fleet import api

        return getattr(api, name)
    if name == "app":
        # `celery -A fleet worker` looks up the attribute `app` of the package.
        from fleet.celery import app

        return app
    raise AttributeError(name)
