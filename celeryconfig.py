"""Site settings for fleet's Celery app: the place to change a Celery setting.

fleet loads its own settings first (``fleet/celery_config.py``, inside the package), then
this module, found on ``sys.path`` as Celery finds ``celeryconfig`` (start the worker
from the directory holding it). Any setting here overrides fleet's, except that a
safety setting (JSON only, late ack with prefetch 1, the broker's visibility timeout,
``result_expires``, no eager tasks) is only taken when it is at least as strict: a
weaker one is ignored and the worker says so in one line at start.

Celery settings only, and no secrets: the broker and result backend URLs come from
``FLEET_BROKER_URL`` / ``FLEET_RESULT_BACKEND``. Examples (Celery's own names):

    worker_send_task_events = True         # task events for Flower (or: worker -E)
    broker_transport_options = {"socket_timeout": 30.0}
    worker_max_tasks_per_child = 10000     # prefork children are replaced after this
"""
