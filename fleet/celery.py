"""The Celery app (``celery -A fleet worker`` finds it here, as the Celery docs teach).

Builds the app and nothing else: fleet's settings (`fleet.celery_config`), then the
site's, then the broker and backend URLs. Distributed mode: ``FLEET_BROKER_URL`` (Redis
or RabbitMQ) and ``FLEET_RESULT_BACKEND`` (Redis; defaults to the broker URL when that is
Redis). Embedded mode (no broker URL): Celery's in-memory transport, served by the
in-process worker of `fleet.embedded`. What a worker does at start and stop lives in
`fleet.worker`, imported at the bottom so that every worker connects its signals.
"""

from __future__ import annotations

import threading

from celery import Celery

from fleet import celery_config
from fleet.settings import Settings

EMBEDDED_BROKER = "memory://"
EMBEDDED_BACKEND = "cache+memory://"
EMBEDDED_POLL_S = 0.01


def create_app(settings: Settings | None = None) -> Celery:
    """The Celery app for `settings`: fleet's safety settings, then the site's
    ``celeryconfig`` (see `fleet.celery_config`), then the broker and backend URLs.

    Raises `ConfigError` when the site module cannot be loaded.
    """
    settings = settings or Settings.load()
    celery_app = Celery("fleet", include=["fleet.tasks"])
    config, refused = celery_config.resolve(
        celery_config.load_site_settings(),
        result_expires=settings.retention,
        transport=celery_config.transport_of(settings.broker_url),
    )
    celery_app.conf.update(config)
    # Said by the worker at start (fleet.worker), where its log is set up.
    celery_app.fleet_refused_settings = refused
    if settings.is_embedded:
        celery_app.conf.broker_url = EMBEDDED_BROKER
        celery_app.conf.result_backend = EMBEDDED_BACKEND
        # The in-memory transport polls its queues (1 s by default): poll often, since
        # the queue lives in this process and one run's latency is the whole wait.
        celery_app.conf.broker_transport_options = {"polling_interval": EMBEDDED_POLL_S}
    else:
        celery_app.conf.broker_url = settings.broker_url
        celery_app.conf.result_backend = settings.result_backend
    return celery_app


app = create_app()


_apps_lock = threading.Lock()
_apps: dict[tuple[str, str], Celery] = {}


def _transport(settings: Settings) -> tuple[str, str]:
    if settings.is_embedded:
        return (EMBEDDED_BROKER, EMBEDDED_BACKEND)
    return (settings.broker_url or "", settings.result_backend or "")


def app_for(settings: Settings) -> Celery:
    """The app for `settings`: the module's app when they agree with the environment it
    was built from (the CLI, a worker), else one built for them (the Python API)."""
    key = _transport(settings)
    if key == (str(app.conf.broker_url), str(app.conf.result_backend)):
        return app
    with _apps_lock:
        if key not in _apps:
            _apps[key] = create_app(settings)
        return _apps[key]


import fleet.worker  # noqa: E402, F401  (a worker's signals: checks, store, pool, watchdog)
