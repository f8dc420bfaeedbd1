"""fleet: run a command on many hosts over SSH, one Celery task per host.

The Python API (``fleet.run``) is loaded lazily so that importing ``fleet``
(and ``fleet --help``) never pulls in Celery.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "run":
        from fleet.api import run

        return run
    if name == "app":
        # `celery -A fleet worker` looks up the attribute `app` of the package.
        from fleet.celery import app

        return app
    raise AttributeError(name)
