"""Celery settings for fleet (loaded with ``app.config_from_object('celeryconfig')``).

Celery settings only, and no secrets: the broker and result backend URLs come from
``FLEET_BROKER_URL`` / ``FLEET_RESULT_BACKEND`` (see fleet/celery.py).
"""

# JSON only, in both directions: a pickle in the broker would be code execution.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
event_serializer = "json"

# At most once: a started task is acknowledged at once (early ack). A worker that dies
# mid-command leaves its host `lost` at the run deadline instead of running it twice.
task_acks_late = False
task_reject_on_worker_lost = False
# One message per free slot: a slow host must not hoard tasks behind it.
worker_prefetch_multiplier = 1

task_default_queue = "fleet"
task_create_missing_queues = True

# The Redis broker redelivers an unacked (reserved, unstarted) message after this;
# it must outlast the longest command (a run's deadline is capped below it).
broker_transport_options = {
    "visibility_timeout": 12 * 3600,
    # A hung (not down) Redis must fail a call, not block it forever.
    "socket_timeout": 10.0,
    "socket_connect_timeout": 3.0,
}
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}
broker_connection_retry_on_startup = True
broker_connection_timeout = 3.0
redis_socket_connect_timeout = 3.0
redis_socket_timeout = 10.0
redis_backend_health_check_interval = 30

# Aligned with the run store's retention (7 days): chord state must not expire mid-run.
result_expires = 7 * 86400

# Flower and `celery events` show fleet.run_on_host by name (from the workers' events).
# No "task-sent" event from the submitter: one more Redis publish per host, measured at
# about a fifth of the CLI's time for 200 hosts (bench/README.md).
worker_send_task_events = True
task_send_sent_event = False

# Network-bound work: threads, not processes.
worker_pool = "threads"
worker_concurrency = 32

worker_hijack_root_logger = False
task_track_started = False
