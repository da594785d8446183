"""Training checkpoints of one (target, seed) job: everything needed to continue bit for bit.

A checkpoint holds the trainer's state (learner, stepper incl. optimizers and meta state,
batch samplers, augmentation generator, selection history, best state so far, loss history,
step and timing counters), the process RNG states (python, numpy, torch) and a ``meta`` block
saying which run it belongs to. It is written atomically (temp file, fsync, ``os.replace``), so a
``kill -9`` at any moment leaves either the previous checkpoint or the new one, and read with
``torch.load(weights_only=True)``: only tensors, numbers, strings and containers are stored.

Where: ``<runs root>/<config hash>/<parent run id>/<target>-s<seed>/checkpoint.pt``; the runs root
is ``$DGMETA_HOME/runs``, else ``runs/`` beside a local tracking store (``sqlite:///x/mlruns.db``
-> ``x/runs``), else ``./runs``. The path is also recorded on the child run as tag
``dgmeta.checkpoint``. Checkpoints are not uploaded to MLflow (the selected network is, as
``model/network.pt``); a finished job deletes its checkpoint, a failed or killed one keeps it.
"""

from __future__ import annotations

import fcntl
import os
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgmeta.errors import ConfigError, TrainingError, WeightsError

FORMAT = "dgmeta.checkpoint/1"
FILE_NAME = "checkpoint.pt"
TMP_PREFIX = ".tmp-"  # a checkpoint being written; renamed to FILE_NAME when complete
#: a lock file younger than this may belong to a run between opening and locking it
STALE_AFTER_S = 600
#: meta keys that must agree between a checkpoint and the job resuming from it
IDENTITY_KEYS = ("config_hash", "backbone", "target", "seed")


# -- where checkpoints live -------------------------------------------------------------------
def runs_root(tracking_uri: str) -> Path:
    if os.environ.get("DGMETA_HOME"):
        return Path(os.environ["DGMETA_HOME"]).expanduser().absolute() / "runs"
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).absolute().parent / "runs"
    if tracking_uri.startswith("file:") or "://" not in tracking_uri:
        store = Path(tracking_uri[len("file:"):] if tracking_uri.startswith("file:") else tracking_uri)
        return store.absolute().parent / "runs"
    return Path("runs").absolute()


def ensure_writable_folder(folder: Path) -> Path:
    """Create ``folder`` (checked before any MLflow run exists, so a bad root leaves no run behind)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise ConfigError(
            f"cannot write checkpoints to {folder}: {exc.strerror or exc}",
            "set DGMETA_HOME to a writable folder (checkpoints go to $DGMETA_HOME/runs)",
        ) from None
    return folder


# -- RNG states as tensors and plain numbers (weights_only-safe) ---------------------------------
def capture_rng() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        # dropout and JiGen's draws on a GPU come from its own generators; empty when CUDA is
        # unused, so a CPU checkpoint stays loadable anywhere
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
        "has_gauss": numpy_state["has_gauss"],
        "gauss": numpy_state["gauss"],
    })
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise ConfigError(
                f"the checkpoint holds the random state of {len(cuda)} GPU(s), this machine has {torch.cuda.device_count()}",
                "resume on a machine with as many GPUs (the same CUDA_VISIBLE_DEVICES)",
            )
        torch.cuda.set_rng_state_all(cuda)


# -- guards ---------------------------------------------------------------------------------------
def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating tensor with a NaN/inf, or None."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


# -- the file -------------------------------------------------------------------------------------
def save_checkpoint(path: Path, meta: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write ``{format, meta, state}`` atomically; the previous file stays intact until the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, "meta": dict(meta), "state": state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and check it belongs to the job described by ``expected``; returns ``{meta, state}``."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, foreign or pickled-object files
        raise WeightsError(
            f"checkpoint {path} is corrupt or truncated",
            "delete it to restart this (target, seed) from step 0, or resume another run",
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("meta"), dict):
        raise WeightsError(f"{path} is not a dgmeta training checkpoint", "delete it to restart this (target, seed) from step 0")
    meta = payload["meta"]
    for key in IDENTITY_KEYS:
        if key in expected and str(meta.get(key)) != str(expected[key]):
            raise WeightsError(
                f"checkpoint {path} was written for {key} {meta.get(key)!r}, this run has {expected[key]!r}",
                "resume with the options the run was started with, or delete the checkpoint",
            )
    return payload


def incompatible_checkpoint(path: Path, backbone: str, exc: Exception) -> WeightsError:
    """The one-line error for a checkpoint whose tensors do not fit the model being resumed."""
    detail = "size mismatch" if "size mismatch" in str(exc) else type(exc).__name__
    return WeightsError(
        f"checkpoint {path} does not fit backbone {backbone!r} and this learner ({detail})",
        "resume with the backbone and learner the run was started with, or delete the checkpoint",
    )


def non_finite_error(what: str, step: int, learner_name: str, last_good: int | None) -> TrainingError:
    kept = f"the last good checkpoint (step {last_good}) is kept" if last_good else "no checkpoint was written"
    return TrainingError(
        f"non-finite {what} after step {step} in learner {learner_name!r}",
        f"lower --set lr=... or enable --set grad_clip=1.0; {kept}",
    )


class JobCheckpoint:
    """The checkpoint file of one (target, seed) job and the identity it must match on load."""

    def __init__(self, folder: Path, identity: dict[str, Any]):
        self.path = Path(folder) / FILE_NAME
        self.identity = dict(identity)

    def save(self, step: int, state: dict[str, Any], **meta: Any) -> Path:
        return save_checkpoint(self.path, {**self.identity, **meta, "step": step}, state)

    def load(self) -> dict[str, Any] | None:
        """``{meta, state}``, or None when no checkpoint was written yet."""
        return load_checkpoint(self.path, self.identity) if self.path.exists() else None

    def discard(self) -> None:
        """Remove the file and the folders it leaves empty (a finished job is never resumed)."""
        self.path.unlink(missing_ok=True)
        folder = self.path.parent
        for _ in range(3):  # <target>-s<seed>/, <parent run id>/, <config hash>/
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent


class RunFolder:
    """``<runs root>/<config hash>/<parent run id>/``: one command's lock and its jobs' checkpoints."""

    def __init__(self, root: Path, config_hash: str, parent_run_id: str):
        self.path = Path(root) / config_hash / parent_run_id
        self.parent_run_id = parent_run_id

    @contextmanager
    def lock(self):
        """Held while the command runs, so a `--resume` of a run that is still alive is refused.
        Holding it, any ``.tmp-*.pt`` in this run's folders is a leftover of a killed writer."""
        from dgmeta.locks import exclusive_lock

        clean_stale_runs(self.path.parent.parent, keep=self.path)
        with exclusive_lock(self.path / "lock", f"run {self.parent_run_id}") as path:
            for leftover in self.path.glob(f"*/{TMP_PREFIX}*.pt"):
                leftover.unlink(missing_ok=True)
            yield path

    def job(self, target: str, seed: int, identity: dict[str, Any]) -> JobCheckpoint:
        return JobCheckpoint(self.path / f"{target}-s{seed}", identity)

    def remove_if_done(self) -> None:
        """After a finished command: drop the lock file and the folders left empty."""
        if not self.path.is_dir() or any(p.name != "lock" for p in self.path.iterdir()):
            return  # a job kept its checkpoint (failed or killed): keep everything
        (self.path / "lock").unlink(missing_ok=True)
        folder = self.path
        for _ in range(3):  # <parent run id>/, <config hash>/, the runs root
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent


def clean_stale_runs(root: Path, keep: Path | None = None) -> int:
    """Remove what killed runs left without a usable checkpoint: ``.tmp-*.pt`` temporaries, then
    the lock file and the folders left empty. Only folders whose lock nobody holds and that are
    older than :data:`STALE_AFTER_S` are touched, and a ``checkpoint.pt`` is never deleted (it is
    what ``--resume`` continues from). Returns the number of run folders removed."""
    removed = 0
    for lock in Path(root).glob("*/*/lock"):
        folder = lock.parent
        if folder == keep or time.time() - _mtime(lock) < STALE_AFTER_S:
            continue
        try:
            handle = open(lock, "a+")
        except OSError:
            continue
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run holds it
            for leftover in folder.glob(f"*/{TMP_PREFIX}*.pt"):
                leftover.unlink(missing_ok=True)
            if any(folder.glob(f"*/{FILE_NAME}")):
                continue
            lock.unlink(missing_ok=True)
            for job in folder.iterdir():
                if job.is_dir():
                    try:
                        job.rmdir()
                    except OSError:
                        pass
            for empty in (folder, folder.parent):
                try:
                    empty.rmdir()
                except OSError:
                    break
            removed += not folder.exists()
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
