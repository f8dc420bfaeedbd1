"""`RunSession`: the one door from the CLI and the Python API to runs and their history.

Submit, follow, report, list and cancel all go through it, so both behave the same. A
context manager: it closes what it opened (the run store's connections, and in
embedded mode the in-process worker).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType

from fleet.lifecycle import RunRequest, cancel_run, run_deadline_s, settle_run
from fleet.results import RunRecord, RunReport
from fleet.runs import Progress, follow_run, record_cancel, submit_run
from fleet.settings import Settings
from fleet.store import open_store
from fleet.store.protocol import RunStore


class RunSession:
    """Runs for one set of settings. Raises `ConfigError`/`BackendError` when its store
    cannot be opened; each method raises what its `fleet.lifecycle`/`fleet.runs`
    counterpart does."""

    def __init__(self, settings: Settings, store: RunStore | None = None) -> None:
        self.settings = settings
        self._stack = ExitStack()
        if store is None:  # closed here only if opened here
            store = open_store(settings)
            self._stack.callback(store.close)
        self.store = store
        self._worker_started = False

    @property
    def is_embedded(self) -> bool:
        return self.settings.is_embedded

    def __enter__(self) -> RunSession:
        if not self.is_embedded:
            self.store.ping()
        return self

    def _ensure_worker(self) -> None:
        if self.is_embedded and not self._worker_started:
            from fleet.embedded import embedded_worker

            self._stack.enter_context(embedded_worker(self.settings, self.store))
            self._worker_started = True

    def submit(self, request: RunRequest, run_id: str | None = None) -> RunRecord:
        """Record and publish a run. Its deadline is decided here, once, before anything
        starts (`fleet.lifecycle.run_deadline_s`)."""
        deadline_s = run_deadline_s(request)
        signer = self.signer
        self._ensure_worker()
        return submit_run(
            self.store,
            request,
            settings=self.settings,
            deadline_s=deadline_s,
            run_id=run_id,
            signer=signer,
        )

    def follow(
        self,
        run_id: str,
        on_progress: Callable[[Progress], None] | None = None,
        timeout: float | None = None,
    ) -> RunReport | None:
        return follow_run(self.store, run_id, on_progress=on_progress, timeout=timeout)

    def report(self, run_id: str) -> RunReport:
        """The run's report, finishing the run first if it is due (`settle_run`)."""
        return settle_run(self.store, run_id)

    def list_reports(self, limit: int, host: str | None = None) -> list[RunReport]:
        """The newest runs' reports, newest first; runs past their deadline are finished
        on the way, so the state shown agrees with the counts."""
        return [self.report(r.run_id) for r in self.store.list_runs(limit=limit, host=host)]

    def run_state(self, run_id: str) -> str:
        return self.store.get_run(run_id).state

    @functools.cached_property
    def signer(self) -> str | None:
        """The identity this session signs task messages with (its certificate's CN), or
        None when signing is off: the audit log's `signer`, and part of a run record's
        `user`. Raises `ConfigError` for a half-configured signing set-up."""
        from fleet.signing import signer_identity  # cryptography: only when it is needed

        return signer_identity(self.settings)

    def cancel(self, run_id: str) -> bool:
        """True if the run was running and is now cancelled; then one audit entry is
        appended (`fleet.runs.record_cancel`: `BackendError` if it cannot be, although
        the run is cancelled all the same)."""
        signer = self.signer  # a bad signing set-up fails before anything changes
        if not cancel_run(self.store, run_id):
            return False
        record_cancel(self.store, run_id, signer=signer)
        return True

    def close(self) -> None:
        self._stack.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
