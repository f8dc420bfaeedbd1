"""`RunSession`: a store, and in embedded mode an in-process worker, for submitting runs.

Used by the CLI and the Python API alike, so both behave the same.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType

from fleet.jobs import cancel_run
from fleet.results import RunRecord, RunReport
from fleet.runs import Progress, RunRequest, follow_run, run_deadline_s, submit_run
from fleet.settings import Settings
from fleet.store import open_store
from fleet.store.protocol import RunStore


class RunSession:
    def __init__(self, settings: Settings, store: RunStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self._stack = ExitStack()
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
            from fleet.celery import embedded_worker, use_store

            use_store(self.store)
            self._stack.enter_context(embedded_worker(self.settings))
            self._worker_started = True

    def submit(self, request: RunRequest, run_id: str | None = None) -> RunRecord:
        run_deadline_s(request)  # refuse a bad request before starting anything
        self._ensure_worker()
        return submit_run(self.store, request, settings=self.settings, run_id=run_id)

    def follow(
        self,
        run_id: str,
        on_progress: Callable[[Progress], None] | None = None,
        timeout: float | None = None,
    ) -> RunReport | None:
        return follow_run(self.store, run_id, on_progress=on_progress, timeout=timeout)

    def cancel(self, run_id: str) -> bool:
        return cancel_run(self.store, run_id)

    def close(self) -> None:
        self._stack.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
