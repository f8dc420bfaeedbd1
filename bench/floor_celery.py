"""The Celery floor: fleet's own Celery app and worker set-up, with a task that does
nothing in place of a host's SSH work.

    celery -A bench.floor_celery worker ...     # the workers (bench/floor.py starts them)
    python bench/floor_celery.py N              # the submitter, driven by bench/floor.py

The workers are fleet workers in every respect (settings, bootsteps, signals, liveness,
watchdog), with one more task, ``bench.noop``. The submitter stays up across rounds
(no interpreter start-up or imports in a round) and, per line read on stdin, publishes a
chord of N ``bench.noop`` tasks closed by ``bench.collect`` the way fleet publishes a
run (`fleet.publishing.publish`: pipelined; members keep no result of their own where
the Redis backend counts the chord), waits for the callback's result and answers one
JSON line ``{"ok": n, "cpu_s": submitter CPU, "wall_s": publish to result}``.

So the row is what "one Celery task per host, closed by a chord" costs on this box
before fleet does any work of its own: no store, no claim, no SSH, no CLI.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.canvas import counts_chord_natively
from fleet.celery import app
from fleet.inventory.hosts import DEFAULT_QUEUE
from fleet.publishing import publish

NOOP = "bench.noop"
COLLECT = "bench.collect"
RESULT_TIMEOUT_S = 300.0


@app.task(name=NOOP)  # type: ignore[misc]  # celery: untyped
def noop(index: int) -> None:
    return None


@app.task(name=COLLECT)  # type: ignore[misc]  # celery: untyped
def collect(results: list[Any]) -> int:
    return len(results)


def one_round(n: int) -> dict[str, Any]:
    from celery import chord, group

    cpu0, t0 = time.process_time(), time.perf_counter()
    ignore = counts_chord_natively(app)
    members = [
        app.signature(NOOP, args=(i,), queue=DEFAULT_QUEUE, ignore_result=ignore) for i in range(n)
    ]
    callback = app.signature(COLLECT, queue=DEFAULT_QUEUE)
    sent = publish(chord(group(members), callback, app=app), app)
    count = app.AsyncResult(sent.id).get(timeout=RESULT_TIMEOUT_S)
    return {
        "ok": int(count),
        "cpu_s": time.process_time() - cpu0,
        "wall_s": time.perf_counter() - t0,
    }


def main() -> int:
    n = int(sys.argv[1])
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(json.dumps(one_round(n)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
