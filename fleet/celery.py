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
from fleet.errors import ConfigError
from fleet.publishing import FleetCelery
from fleet.settings import Settings
from fleet.signing import DIGEST, SigningConfig, signing_config
from fleet.wakeup import WakeOnFreeSlot

EMBEDDED_BROKER = "memory://"
EMBEDDED_BACKEND = "cache+memory://"
EMBEDDED_POLL_S = 0.01
#: A content type no message has (a name with "/" needs no registered serializer).
ACCEPT_NOTHING = "application/x-fleet-signing-misconfigured"


def create_app(settings: Settings | None = None) -> Celery:
    """The Celery app for `settings`: fleet's safety settings, then the site's
    ``celeryconfig`` (see `fleet.celery_config`), then the broker and backend URLs.

    Raises `ConfigError` when the site module cannot be loaded.
    """
    settings = settings or Settings.load()
    celery_app = FleetCelery("fleet", include=["fleet.tasks"])
    celery_app.steps["consumer"].add(WakeOnFreeSlot)
    signing, signing_error = _signing(settings)
    config, refused = celery_config.resolve(
        celery_config.load_site_settings(),
        result_expires=settings.retention,
        transport=celery_config.transport_of(settings.broker_url),
        signing=signing.celery_settings() if signing else None,
    )
    if signing_error is not None:
        # Fail closed: the unregistered `auth` serializer sends nothing, and no message
        # has the content type accepted. A worker refuses to start with the error
        # (fleet.worker), and `app_for` raises it to the submitter.
        config.update(task_serializer=celery_config.AUTH, accept_content=[ACCEPT_NOTHING])
    celery_app.conf.update(config)
    # Said by the worker at start (fleet.worker), where its log is set up.
    celery_app.fleet_refused_settings = refused
    celery_app.fleet_signing = signing
    celery_app.fleet_config_error = signing_error
    if signing is not None:
        # Registers the `auth` serializer in kombu's registry (for the whole process:
        # one signing key per process) and disables every decoder but JSON's (results).
        celery_app.setup_security(allowed_serializers=[celery_config.JSON], digest=DIGEST)
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


def _signing(settings: Settings) -> tuple[SigningConfig | None, ConfigError | None]:
    try:
        return signing_config(settings), None
    except ConfigError as exc:
        return None, exc


app = create_app()


_apps_lock = threading.Lock()
_apps: dict[tuple[str, ...], Celery] = {}


def _transport(settings: Settings) -> tuple[str, ...]:
    if settings.is_embedded:
        return (EMBEDDED_BROKER, EMBEDDED_BACKEND, "", "", "")
    return (
        settings.broker_url or "",
        settings.result_backend or "",
        settings.signing_key,
        settings.signing_cert,
        settings.signing_cert_store,
    )


def _key_of(celery_app: Celery) -> tuple[str, ...]:
    signing: SigningConfig | None = celery_app.fleet_signing
    if celery_app.fleet_config_error is not None:
        return ("",)  # never reused: `app_for` builds (and refuses) afresh
    return (
        str(celery_app.conf.broker_url),
        str(celery_app.conf.result_backend),
        signing.key if signing else "",
        signing.cert if signing else "",
        (signing.cert_store or "") if signing else "",
    )


def app_for(settings: Settings) -> Celery:
    """The app for `settings`: the module's app when they agree with the environment it
    was built from (the CLI, a worker), else one built for them (the Python API).

    Raises `ConfigError` when the signing settings are half configured (`fleet.signing`).
    """
    key = _transport(settings)
    if key == _key_of(app):
        return app
    with _apps_lock:
        if key not in _apps:
            built = create_app(settings)
            if built.fleet_config_error is not None:
                raise built.fleet_config_error
            _apps[key] = built
        return _apps[key]


import fleet.worker  # noqa: E402, F401  (a worker's signals: checks, store, pool, watchdog)
