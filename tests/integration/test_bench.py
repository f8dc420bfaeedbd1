"""bench/run.py still runs: every row of its table, on a few real hosts.

Figures are never asserted (timings belong to the bench, not the tests); what is
checked is that the benchmark the performance work is judged by starts, measures every
row with every host answering, and prints its document.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tests.integration.fleetcli import REPO

HOSTS = 3
BENCH_TIMEOUT_S = 300


def test_bench_measures_every_row() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    bench = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "run.py"), "--hosts", str(HOSTS), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        stdout, stderr = bench.communicate(timeout=BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # Ctrl-C: the bench's harness stops its sshd, Redis and workers on the way out.
        bench.send_signal(signal.SIGINT)
        stdout, stderr = bench.communicate(timeout=60)
        raise AssertionError(f"bench/run.py still running after {BENCH_TIMEOUT_S} s") from None
    assert bench.returncode == 0, stderr[-3000:]
    (result,) = json.loads(stdout)
    rows = {row["row"]: row for row in result["rows"]}
    assert set(rows) == {
        "openssh xargs -P64 (cold)",
        "fleet cold",
        "fleet warm",
        "fleet warm (API, process up)",
        "fleet warm sleep 1",
        "fleet warm sleep 1 (API, process up)",
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
