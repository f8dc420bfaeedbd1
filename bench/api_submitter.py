"""fleet's Python API from a process that is already up, driven by bench/fleetrows.py.

    python bench/api_submitter.py PATTERN COMMAND

The inventory, broker and the rest come from the environment (FLEET_*), as for the CLI.
It prints ``ready`` once fleet is imported; then, per line read on stdin, it runs
``fleet.run(COMMAND, PATTERN)``, waits for the report and answers one JSON line:
``{"ok", "hosts", "reused", "not_ok": [...], "cpu_s", "wall_s"}``, CPU and wall
of this process for the call (submit, follow, report), seconds.

This is the path of a web app or a script calling fleet (the mission's "a web app or
script calls fleet from Python"): no interpreter start-up and no imports per run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fleet

RESULT_TIMEOUT_S = 1800.0


def one_run(pattern: str, command: str) -> dict[str, object]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    with fleet.run(command, pattern) as handle:
        report = handle.wait(timeout=RESULT_TIMEOUT_S)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    if report is None:  # the bench reports it and stops
        return {
            "ok": 0,
            "hosts": 0,
            "reused": 0,
            "not_ok": ["no report"],
            "cpu_s": cpu,
            "wall_s": wall,
        }
    results = report.results
    bad = [f"{r.host}: {r.status.value}: {r.error}" for r in results if r.status.value != "ok"]
    return {
        "ok": len(results) - len(bad),
        "hosts": len(results),
        "reused": sum(bool(r.connection_reused) for r in results),
        "not_ok": bad[:20],
        "cpu_s": cpu,
        "wall_s": wall,
    }


def main() -> int:
    pattern, command = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(json.dumps(one_run(pattern, command)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
