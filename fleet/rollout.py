"""Rolling runs: batches, a failure budget and a fan-out limit, as plain functions.

- `--batch N|N%`: the hosts run in batches of that size, one batch after another (each
  its own chord); the run's report, history and exit code stay one run. Salt's
  ``--batch-size`` and Ansible's ``serial`` are the models.
- `--max-fail N|N%` (of the hosts selected): once that many hosts are not `ok`, no
  further batch starts and the hosts never started end `skipped`. Ansible's
  ``max_fail_percentage`` stops when *more* than the share failed; fleet stops when the
  count reaches N, so ``--max-fail 1`` means "stop at the first failure".
- `--fanout N`: at most N hosts of the run in flight at once across all workers
  (Ansible's ``-f``, clush's ``-f``), whatever the workers' concurrency: a host's task
  takes one of N slots in the run store before it starts and gives it back when done.

No Celery and no store here: `fleet.lifecycle.next_batch` decides after each batch and
`fleet.tasks` publishes what it decides.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fleet.errors import UsageError
from fleet.results import RunRecord

BatchOrder = Literal["inventory", "random"]
BATCH_ORDERS: tuple[BatchOrder, ...] = ("inventory", "random")


@dataclass(frozen=True, slots=True)
class Size:
    """A count of hosts, or a share of the hosts selected (`percent`)."""

    value: int
    percent: bool = False

    def of(self, total: int) -> int:
        """Hosts this size means out of `total`: a share rounds up, and is at least 1."""
        if not self.percent:
            return self.value
        return max(1, math.ceil(total * self.value / 100))

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_size(text: str, option: str) -> Size:
    """`N` (a whole number >= 1) or `N%` (1..100). Raises `UsageError` naming `option`."""
    raw = text.strip()
    percent = raw.endswith("%")
    digits = raw[:-1] if percent else raw
    if not (digits.isascii() and digits.isdigit()):
        raise UsageError(f"{option} {text!r}: expected a whole number or a percentage (N or N%)")
    value = int(digits)
    if value < 1:
        raise UsageError(f"{option} {text!r}: must be at least 1")
    if percent and value > 100:
        raise UsageError(f"{option} {text!r}: a percentage is at most 100%")
    return Size(value, percent)


@dataclass(frozen=True, slots=True)
class Rollout:
    """How a run's hosts are rolled out. The default is all at once, no budget."""

    batch: Size | None = None
    max_fail: Size | None = None
    fanout: int | None = None
    order: BatchOrder = "inventory"

    def __post_init__(self) -> None:
        if self.fanout is not None and self.fanout < 1:
            raise UsageError(f"--fanout {self.fanout}: must be at least 1")
        if self.order not in BATCH_ORDERS:
            raise UsageError(f"--batch-order {self.order!r}: expected inventory or random")
        if self.order != "inventory" and self.batch is None:
            raise UsageError(f"--batch-order {self.order} needs --batch")

    def plan(self, hosts: Sequence[str]) -> tuple[tuple[str, ...], ...]:
        """The batches, in the order they run; () when the run is not batched."""
        if self.batch is None:
            return ()
        names = list(hosts)
        if self.order == "random":
            random.SystemRandom().shuffle(names)
        size = self.batch.of(len(names))
        return tuple(tuple(names[i : i + size]) for i in range(0, len(names), size))

    def batch_sizes(self, total: int) -> list[int]:
        """How many hosts each batch holds, for `total` hosts ([total]: one batch)."""
        if self.batch is None or total == 0:
            return [total]
        size = self.batch.of(total)
        return [min(size, total - start) for start in range(0, total, size)]

    def fail_limit(self, total: int) -> int | None:
        """Hosts not `ok` at which no further batch starts, or None (every batch runs)."""
        return None if self.max_fail is None else self.max_fail.of(total)


#: The claim name that marks batch K (0-based) as published (never a host name: inventory
#: names hold no control character), so a redelivered chord callback publishes a batch once.
BATCH_CLAIM = "\x00batch:{}"


def fanout_scope(run_id: str) -> str:
    """The slot scope of a run's `--fanout` (`RunStore.take_slot`, `fleet.batches`)."""
    return f"fanout:{run_id}"


#: All at once, no budget, no fan-out limit.
NO_ROLLOUT = Rollout()


def skipped_message(run: RunRecord) -> str:
    # max_fail is the count a share was turned into: say it as a count of hosts.
    hosts = "host" if run.max_fail == 1 else "hosts"
    return f"not started: {run.max_fail} {hosts} not ok reached the run's --max-fail"
