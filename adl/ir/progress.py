"""Progress reporting for long steps, behind a small interface so passes never touch the console."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Protocol


class Task(Protocol):
    def advance(self, steps: float = 1, **fields: Any) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: float | None) -> contextlib.AbstractContextManager[Task]: ...


class _NullTask:
    def advance(self, steps: float = 1, **fields: Any) -> None:
        pass


class SilentProgress:
    """For library use and tests: reports nothing."""

    @contextlib.contextmanager
    def task(self, description: str, total: float | None) -> Iterator[Task]:
        yield _NullTask()


class RichProgress:
    """A rich progress bar per long step (epochs, builds, timing runs), shown on stderr."""

    def __init__(self, console: Any) -> None:
        self._console = console

    @contextlib.contextmanager
    def task(self, description: str, total: float | None) -> Iterator[Task]:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichBar

        columns = [
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
        ]
        # redirect_stderr=False: what libraries write to sys.stderr while a bar is live stays there
        # (in `adl compile`, the log file of adl.library_log) instead of being printed above the bar
        with RichBar(*columns, console=self._console, transient=False, redirect_stderr=False) as bar:
            task_id = bar.add_task(description, total=total, status="")

            class _Task:
                def advance(self, steps: float = 1, **fields: Any) -> None:
                    status = "  ".join(f"{k} {v}" for k, v in fields.items())
                    bar.update(task_id, advance=steps, status=status)

            yield _Task()
