"""A small thread pool with a rich progress bar, for image decoding (PIL releases the GIL)."""

from __future__ import annotations

import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import nullcontext
from typing import Callable, Sequence, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

#: items per task: big enough to keep pool overhead negligible, small enough for a smooth bar
CHUNK = 32


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def progress_bar(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )


def run_chunked(items: Sequence[T], work: Callable[[int, T], None], description: str, progress: bool, workers: int | None = None) -> None:
    """Call ``work(index, item)`` for every item in a thread pool; the first exception is re-raised
    once the running tasks finish (pending ones are cancelled)."""
    if not items:
        return

    def run(start: int) -> int:
        stop = min(start + CHUNK, len(items))
        for index in range(start, stop):
            work(index, items[index])
        return stop - start

    bar = progress_bar() if progress else None
    pool = ThreadPoolExecutor(max_workers=workers or default_workers())
    try:
        pending = {pool.submit(run, start) for start in range(0, len(items), CHUNK)}
        with bar if bar is not None else nullcontext():
            task = bar.add_task(description, total=len(items)) if bar is not None else None
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                failed = next((f for f in done if f.exception() is not None), None)
                if failed is not None:
                    raise failed.exception()
                if bar is not None:
                    bar.advance(task, sum(f.result() for f in done))
    finally:
        # on an error or Ctrl-C, drop the queued chunks instead of decoding them all first
        pool.shutdown(wait=True, cancel_futures=True)
