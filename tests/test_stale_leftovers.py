"""Leftovers of killed runs (a ``.tmp-*.pt`` from a kill during a checkpoint write, the lock file of
a run with no checkpoint) are cleaned on the next run, and nothing a live or resumable run needs."""

from __future__ import annotations

import fcntl
import os
import time

from dgmeta.training.checkpointing import STALE_AFTER_S, RunFolder, clean_stale_runs


def killed_run(root, name: str, checkpoint: bool = False, age: float = STALE_AFTER_S + 60):
    folder = root / "hash" / name
    (folder / "d2-s0").mkdir(parents=True)
    (folder / "lock").write_text("pid 1")
    (folder / "d2-s0" / ".tmp-abc123.pt").write_bytes(b"half a checkpoint")
    if checkpoint:
        (folder / "d2-s0" / "checkpoint.pt").write_bytes(b"a complete one")
    old = time.time() - age
    os.utime(folder / "lock", (old, old))
    return folder


def test_a_run_killed_during_its_first_checkpoint_is_removed(tmp_path):
    folder = killed_run(tmp_path, "run1")
    assert clean_stale_runs(tmp_path) == 1
    assert not folder.exists() and not (tmp_path / "hash").exists()


def test_a_resumable_checkpoint_is_kept_and_only_the_temporary_goes(tmp_path):
    folder = killed_run(tmp_path, "run1", checkpoint=True)
    assert clean_stale_runs(tmp_path) == 0
    assert (folder / "d2-s0" / "checkpoint.pt").read_bytes() == b"a complete one"
    assert (folder / "lock").exists() and not (folder / "d2-s0" / ".tmp-abc123.pt").exists()


def test_live_and_just_started_runs_are_not_touched(tmp_path):
    live = killed_run(tmp_path, "live")
    fresh = killed_run(tmp_path, "fresh", age=0)
    with open(live / "lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's run
        assert clean_stale_runs(tmp_path) == 0
    assert (live / "d2-s0" / ".tmp-abc123.pt").exists() and (fresh / "d2-s0" / ".tmp-abc123.pt").exists()


def test_taking_a_run_lock_cleans_its_own_temporaries_and_stale_neighbours(tmp_path):
    stale = killed_run(tmp_path, "stale")
    mine = killed_run(tmp_path, "mine", checkpoint=True, age=0)
    with RunFolder(tmp_path, "hash", "mine").lock():
        assert not (mine / "d2-s0" / ".tmp-abc123.pt").exists()
        assert (mine / "d2-s0" / "checkpoint.pt").exists()
        assert not stale.exists()
