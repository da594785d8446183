"""Clean stops on SIGINT / SIGTERM.

Inside the training loop a stop signal is only *recorded*: the loop finishes the step it is in,
writes a checkpoint and then raises :class:`RunInterrupted`, so the run can be resumed exactly.
Anywhere else (decoding images, uploading artifacts) there is no step to finish, so the signal
raises :class:`RunInterrupted` at once. A second signal during a deferred stop also raises at
once: a user pressing Ctrl-C twice wants out now. Either way the experiment marks its MLflow
runs KILLED and the CLI exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from dgmeta.errors import TrainingError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(TrainingError):
    """The run was stopped by a signal; its exit code is the shell's ``128 + signal number``."""

    def __init__(self, signum: int, step: int | None = None, checkpointed: bool = False, hint: str | None = None):
        name = signal.Signals(signum).name
        where = f" after step {step}" if step is not None else ""
        where += ", checkpoint written" if checkpointed else ""
        super().__init__(f"interrupted by {name}{where}", hint)
        self.signum = signum
        self.step = step
        self.exit_code = 128 + signum


class StopRequests:
    """Receives stop signals; the training loop asks it between steps whether to stop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._deferring = 0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame=None) -> None:
        if self._deferring and self.signum is None:
            self.signum = signum
            return
        raise RunInterrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator["StopRequests"]:
        """While inside, a first signal waits for :meth:`raise_if_requested`."""
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1

    def raise_if_requested(self, step: int, checkpointed: bool = False) -> None:
        if self.signum is not None:
            raise RunInterrupted(self.signum, step, checkpointed)


@contextmanager
def stop_signals() -> Iterator[StopRequests]:
    """Route SIGINT/SIGTERM to a fresh :class:`StopRequests` for the block; restores the old handlers.

    Signal handlers can only be set from the main thread; elsewhere (a sweep's worker thread)
    the requests object is returned unconnected and Ctrl-C behaves as before.
    """
    requests = StopRequests()
    if threading.current_thread() is not threading.main_thread():
        yield requests
        return
    previous = {signum: signal.signal(signum, requests.handle) for signum in STOP_SIGNALS}
    try:
        yield requests
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
