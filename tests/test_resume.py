"""Exact resume: a run killed with SIGKILL mid-training and resumed ends where an uninterrupted
run ends (same test_acc, same saved parameters); plus the checkpoint file's own guarantees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from dgmeta.errors import WeightsError
from dgmeta.hparams import apply_overrides, default_hparams
from dgmeta.learners import LearnerContext, create_learner
from dgmeta.meta import create_stepper
from dgmeta.models import create_network
from dgmeta.runs.job import seed_everything
from dgmeta.training.checkpointing import JobCheckpoint, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from dgmeta.training.trainer import BatchSource, Trainer
from tests.helpers import make_folder_dataset, tiny_job_data

STEPS = 30


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and a shared machine is not oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_command(dataset: Path, store: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "dgmeta", "run", f"folder:{dataset}", "--base", "erm", "--target", "d2",
        "--steps", str(STEPS), "--eval-every", "10", "--checkpoint-every", "5", "--backbone", "test_resnet",
        "--weights", "none", "--image-size", "24", "--batch-size", "8", "--split", "random", "--deterministic",
        "--quiet", "--set", "lr=0.05", "--tracking-uri", f"sqlite:///{store}", *extra,
    ]


def subprocess_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, DGMETA_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DGMETA_HOME", None)
    return env


def checkpoint_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["meta"]["step"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return None


def wait_for_checkpoint(process: subprocess.Popen, runs: Path, min_step: int, timeout: float = 240) -> tuple[Path, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in runs.glob("*/*/*/checkpoint.pt"):
            step = checkpoint_step(path)
            if step is not None and step >= min_step:
                return path, step
        assert process.poll() is None, f"the run ended (rc {process.returncode}) before a checkpoint at step >= {min_step}: {process.stderr.read()}"
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared in time")


def only_run(client: MlflowClient, role: str):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.`dgmeta.role` = '{role}'")
    assert len(runs) == 1, f"expected one {role} run, found {len(runs)}"
    return runs[0]


def saved_network(client: MlflowClient, run_id: str, into: Path) -> dict[str, torch.Tensor]:
    path = client.download_artifacts(run_id, "model/network.pt", str(into))
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    dataset = make_folder_dataset(tmp_path / "toy", per_class=8)
    store_a, store_b = tmp_path / "a" / "mlruns.db", tmp_path / "b" / "mlruns.db"
    store_a.parent.mkdir()
    store_b.parent.mkdir()
    # both runs at once: the uninterrupted reference and the one that gets killed
    reference = subprocess.Popen(run_command(dataset, store_a), env=subprocess_env(tmp_path / "cache_a"), cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(run_command(dataset, store_b), env=subprocess_env(tmp_path / "cache_b"), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        checkpoint, step = wait_for_checkpoint(victim, store_b.parent / "runs", min_step=10)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(60) == -signal.SIGKILL
    finally:
        victim.kill()
    assert 10 <= step < STEPS

    client_b = MlflowClient(tracking_uri=f"sqlite:///{store_b}")
    parent = only_run(client_b, "parent")
    child = only_run(client_b, "child")
    assert parent.info.status == child.info.status == "RUNNING"  # nobody could mark a SIGKILLed run
    assert child.data.tags["dgmeta.checkpoint"] == str(checkpoint)

    resumed = subprocess.run(run_command(dataset, store_b, "--resume", child.info.run_id), env=subprocess_env(tmp_path / "cache_b"),
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait(300) == 0, reference.stderr.read()

    client_a = MlflowClient(tracking_uri=f"sqlite:///{store_a}")
    ref_child = only_run(client_a, "child")
    new_child = only_run(client_b, "child")  # the same child run continued: no second one
    assert new_child.info.run_id == child.info.run_id and new_child.info.status == "FINISHED"
    assert client_b.get_run(parent.info.run_id).info.status == "FINISHED"
    resumed_from = int(new_child.data.tags["dgmeta.resumed_from_step"])
    assert step <= resumed_from < STEPS
    assert new_child.data.metrics["test_acc"] == ref_child.data.metrics["test_acc"]
    assert new_child.data.metrics["selected_step"] == ref_child.data.metrics["selected_step"]

    # the evaluations before the kill came back from the checkpoint's history: all equal the reference's
    ref_results = json.loads(Path(client_a.download_artifacts(ref_child.info.run_id, "results.json", str(tmp_path))).read_text())
    new_results = json.loads(Path(client_b.download_artifacts(new_child.info.run_id, "results.json", str(tmp_path / "b"))).read_text())
    assert [(c["step"], c["weights"]) for c in new_results["checkpoints"]] == [(10, "live"), (20, "live"), (30, "live")]
    def accuracies(rows):  # wall-clock training time is the one field two processes cannot share
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in rows]

    assert accuracies(new_results["checkpoints"]) == accuracies(ref_results["checkpoints"])
    seconds = [c["train_seconds"] for c in new_results["checkpoints"]]
    assert all(s > 0 for s in seconds) and seconds == sorted(seconds)

    ref_state = saved_network(client_a, ref_child.info.run_id, tmp_path / "dl_a")
    new_state = saved_network(client_b, new_child.info.run_id, tmp_path / "dl_b")
    assert ref_state.keys() == new_state.keys()
    for name, tensor in ref_state.items():
        torch.testing.assert_close(new_state[name], tensor, rtol=0, atol=1e-6, msg=f"{name} differs after resume")
    # the losses of the steps after the checkpoint equal the reference's (logged twice when they
    # were flushed before the kill: the last value per step is the resumed run's)
    ref_losses = {m.step: m.value for m in client_a.get_metric_history(ref_child.info.run_id, "train.loss")}
    new_losses = {m.step: m.value for m in client_b.get_metric_history(new_child.info.run_id, "train.loss")}
    assert set(new_losses) == set(range(1, STEPS + 1))
    assert new_losses == pytest.approx(ref_losses, abs=1e-6)
    assert not checkpoint.exists(), "a finished job deletes its checkpoint"


# -- in process: every learner and meta stepper continues exactly ----------------------------------
def make_trainer(base: str, meta: str, protocol: str, steps: int, **options) -> Trainer:
    seed_everything(0, deterministic=True)
    data = tiny_job_data()
    hparams = apply_overrides(default_hparams(base, meta), {"dropout": 0.2})  # dropout: the global torch RNG matters
    network = create_network("test_resnet", 2, "none", dropout=0.2)
    learner = create_learner(base, network, LearnerContext(2, 2, protocol, steps), hparams)
    stepper = create_stepper(meta, learner, hparams, steps, 2, 0)
    return Trainer(learner, stepper, data, BatchSource(data, 4, 0, augment=True), steps, eval_every=3, progress=False, **options)


@pytest.mark.parametrize("base, meta, protocol", [("dann", "init+critic", "msda"), ("jigen", "critic", "dg"), ("mcd", "init", "msda")])
def test_resuming_from_a_checkpoint_file_continues_exactly(base, meta, protocol, tmp_path, one_thread):
    steps = 6
    straight = make_trainer(base, meta, protocol, steps)
    straight.fit()

    job = JobCheckpoint(tmp_path, {"backbone": "test_resnet"})
    first = make_trainer(base, meta, protocol, steps, checkpoint_every=4, on_checkpoint=lambda step, state: step == 4 and job.save(step, state))
    first.fit()
    resumed = make_trainer(base, meta, protocol, steps)
    torch.manual_seed(123), np.random.seed(123)  # whatever the process did before, the checkpoint decides
    resumed.load_state_dict(job.load()["state"])
    assert resumed.start_step == 4
    resumed.fit()

    for (name, expected), actual in zip(straight.learner.state_dict().items(), resumed.learner.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6, msg=f"{name} differs")
    assert [(c.step, c.val, c.test) for c in resumed.history.checkpoints] == [(c.step, c.val, c.test) for c in straight.history.checkpoints]
    assert resumed.losses.keys() == straight.losses.keys()
    for name, values in straight.losses.items():  # every loss term of every step, before and after the resume
        np.testing.assert_allclose(np.array(resumed.losses[name]), np.array(values), rtol=0, atol=1e-6, err_msg=name)


# -- the file --------------------------------------------------------------------------------------
def test_checkpoint_round_trip_restores_rng_states(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    job = JobCheckpoint(tmp_path / "job", {"config_hash": "h", "backbone": "b", "target": "t", "seed": 0})
    job.save(7, {"rng": capture_rng(), "weights": {"w": torch.arange(3.0)}})
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)  # scramble, then restore
    payload = job.load()
    assert payload["meta"]["step"] == 7 and torch.equal(payload["state"]["weights"]["w"], torch.arange(3.0))
    restore_rng(payload["state"]["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 5}, {"x": torch.ones(2)})
    with pytest.raises(Exception):
        save_checkpoint(path, {"step": 10}, {"x": lambda: None})  # not picklable: fails mid-write
    assert load_checkpoint(path, {})["meta"]["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temp file left behind"


def test_truncated_and_foreign_checkpoints_are_one_line_errors(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 5, "backbone": "test_resnet"}, {"x": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        load_checkpoint(path, {})
    torch.save({"format": "dgmeta.checkpoint/1", "meta": {}, "state": {"obj": Path("x")}}, path)
    with pytest.raises(WeightsError, match="corrupt or truncated"):  # pickled objects are refused (weights_only)
        load_checkpoint(path, {})
    save_checkpoint(path, {"step": 5, "backbone": "test_resnet"}, {})
    with pytest.raises(WeightsError, match="backbone 'test_resnet', this run has 'test_efficientnet'"):
        load_checkpoint(path, {"backbone": "test_efficientnet"})
