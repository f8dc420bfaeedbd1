"""fleet's Celery task names: what a message names, and Flower and the worker logs show.
Tasks are named, not imported, wherever a message is sent (`fleet.canvas`, the
watchdog's resumed batches in `fleet.worker`), so no sender imports the tasks module."""

RUN_ON_HOST = "fleet.run_on_host"
AGGREGATE = "fleet.aggregate"
