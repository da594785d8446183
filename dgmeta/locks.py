"""A per-pipeline lock so two retraining jobs of the same pipeline never run at once.

``fcntl.flock`` (non-blocking): the kernel drops the lock when the holder exits, even on a
crash or ``kill -9``, so a stale lock file never blocks the next scheduled run.

Kept rather than ``filelock``: where the filesystem lacks flock, filelock falls back to a soft lock
(a file that outlives a killed holder and blocks every later run); this lock fails instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dgmeta.errors import DgmetaError


class LockHeldError(DgmetaError):
    """Another process holds the lock."""

    exit_code = 4


def lock_dir() -> Path:
    return Path(os.environ.get("DGMETA_CACHE") or Path.home() / ".cache" / "dgmeta") / "locks"


def lock_path_for(pipeline: str | Path) -> Path:
    resolved = Path(pipeline).resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    return lock_dir() / f"retrain-{resolved.stem}-{digest}.lock"


@contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[Path]:
    """Hold ``path`` locked for the block; raise :class:`LockHeldError` at once if someone else does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LockHeldError(
                f"{what} is already running ({holder}, lock {path})",
                "wait for it to finish; the lock is released when that process exits",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield path
    finally:
        handle.close()  # closing the descriptor releases the flock


def pipeline_lock(pipeline: str | Path):
    return exclusive_lock(lock_path_for(pipeline), f"retraining of {Path(pipeline).name}")
