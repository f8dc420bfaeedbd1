"""Terminal presentation: whether to use colour, and the live progress bar (stderr)."""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import IO, Any

from fleet.runs import Progress


def wants_color(stream: IO[str]) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


class ProgressDisplay:
    """A live bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, command: str, total: int, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Any = None
        self._task: Any = None
        self._command = command
        self._total = total

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[elapsed]}"),
                console=console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                _short(self._command), total=self._total, counts="", elapsed=""
            )
        return self

    def update(self, progress: Progress) -> None:
        if self._progress is None:
            return
        ok = progress.counts.get("ok", 0)
        not_ok = progress.done - ok
        counts = f"[green]{ok} ok[/]" + (f" [red]{not_ok} not ok[/]" if not_ok else "")
        if progress.batches:
            counts = f"batch {progress.batch}/{progress.batches}  " + counts
        self._progress.update(
            self._task,
            completed=progress.done,
            counts=counts,
            elapsed=f"{progress.elapsed_s:.1f}s",
        )

    def note(self, message: str) -> None:
        """A line for the operator on stderr, above the bar when there is one."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


def _short(command: str, limit: int = 30) -> str:
    from fleet.textsafe import make_visible

    text = make_visible(command).replace("[", "\\[")
    return text if len(text) <= limit else text[: limit - 1] + "…"
