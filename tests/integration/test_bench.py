"""bench/run.py still runs: every row of its table, on a few real hosts.

Figures are never asserted (timings belong to the bench, not the tests); what is
checked is that the benchmark the performance work is judged by starts, measures every
row with every host answering, and prints its document.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.fleetcli import REPO

HOSTS = 3
BENCH_TIMEOUT_S = 300


def test_bench_measures_every_row() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--hosts", str(HOSTS), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=BENCH_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads(done.stdout)
    rows = {row["row"]: row for row in result["rows"]}
    assert set(rows) == {
        "openssh xargs -P64 (cold)",
        "fleet cold",
        "fleet warm",
        "fleet warm (API, process up)",
        "fleet warm sleep 1",
        "paramiko floor cold",
        "paramiko floor warm",
        "paramiko floor sleep 1",
        "celery floor no-op",
        "openssh xargs -P64 (default kex)",
    }
    assert all(row["wall_s"] > 0 for row in rows.values())
    assert rows["fleet warm"]["connections_reused"] == HOSTS
    assert rows["fleet warm (API, process up)"]["connections_reused"] == HOSTS
    assert rows["celery floor no-op"]["redis_commands_per_host"] > 0
