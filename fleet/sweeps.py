"""What a sweep over the run store's recent runs (the watchdog's, `fleet.orphans`') does
when one run's record is bad: that run is skipped with a warning and the sweep goes on.
Records are untrusted (anyone with the store's password may write one); the store
itself failing is another matter, raised so that the whole sweep waits for its next
round."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fleet.errors import CorruptRecordError, FleetError
from fleet.textsafe import exception_line

log = logging.getLogger(__name__)


@contextmanager
def one_run(run_id: str, failing: str) -> Iterator[None]:
    """Around the work on one run of a sweep: an error of that run's data is logged as
    "run RUN_ID FAILING: why" and swallowed; `FleetError` (the store failing) is
    raised."""
    try:
        yield
    except CorruptRecordError as exc:  # one run's tampered data, not the store failing
        log.warning("run %s %s: %s", run_id, failing, exc)
    except FleetError:
        raise
    except Exception as exc:  # one run's bad data must not stop the others'
        log.warning("run %s %s: %s: %s", run_id, failing, type(exc).__name__,
                    exception_line(exc))  # fmt: skip
