"""A rich progress bar with step, loss and images/s; silent with ``--quiet`` or when disabled."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    def __init__(self, total: int, description: str, enabled: bool = True, start: int = 0):
        self.enabled = enabled
        self.total = total
        self.start = start
        self.description = description
        self._progress: Progress | None = None

    def __enter__(self) -> "StepProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[ips]:.0f} img/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.start, loss=float("nan"), ips=0.0)
        return self

    def update(self, step: int, loss: float, images_per_second: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=loss, ips=images_per_second)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
