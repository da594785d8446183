"""Failures of the environment (permissions, full disks, an unreachable tracking store) turned
into one-line errors for every `dgmeta` command; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import errno
from contextlib import contextmanager
from typing import Iterator


#: OSErrors that are the environment's fault (permissions, read-only or full disks), not a bug
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


@contextmanager
def environment_errors() -> Iterator[None]:
    """Turn failures of the environment (tracking store, file permissions, full disk) that escape as
    library exceptions into one-line DgmetaErrors; anything else is a bug and keeps its traceback."""
    from dgmeta.errors import DgmetaError, TrackingError

    try:
        yield
    except DgmetaError:
        raise
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        raise DgmetaError(f"{exc.strerror or exc}{where}", "fix the folder's permissions or free space, or point the option at another folder") from None
    except Exception as exc:
        if not _is_tracking_error(exc):
            raise
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TrackingError(f"MLflow tracking store failed ({type(exc).__name__}: {first_line})", "check --tracking-uri / MLFLOW_TRACKING_URI and that the store is writable") from None


def _is_tracking_error(exc: Exception) -> bool:
    module = type(exc).__module__
    return module.startswith(("mlflow.", "sqlalchemy.", "alembic."))
