"""Data-parallel training (dgmeta.training.distributed): 2 CPU processes over gloo.

One spawn of two ranks trains every base learner and meta mode for a few steps through the real
BatchSource / stepper / Trainer path; the parent compares their parameters with each other and,
where the update is exactly the global-batch update (per-sample-normalised backbone, no random
objective), with a single-process run on the global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dgmeta.training.distributed import (
    SINGLE,
    DistContext,
    GradientAverager,
    NullTracking,
    ShardedBatches,
    _without_nproc,
    launch_command,
    relaunch,
)
from dgmeta.data import InfiniteBatches
from dgmeta.errors import ConfigError

WORLD = 2
PER_RANK_BATCH = 3  # per source domain; the global batch is 6 per domain
STEPS = 3
SIZE = 32
# (name, base, meta, protocol, hparam overrides, exact): exact = must equal the single-process run
CASES = [
    ("erm", "erm", "none", "dg", {}, True),
    ("dann", "dann", "none", "msda", {"disc_dropout": 0.0}, True),
    ("mcd", "mcd", "none", "msda", {"num_k": 2}, True),
    ("jigen", "jigen", "none", "dg", {}, False),
    ("init-order1", "erm", "init", "dg", {"meta_order": 1}, False),
    ("init-order2", "erm", "init", "dg", {"meta_order": 2}, False),
    ("init-offline", "erm", "init", "dg", {"meta_schedule": "offline", "offline_meta_steps": 2}, False),
    ("critic", "erm", "critic", "dg", {}, False),
]


def _domain(rng: np.random.Generator, n: int, shift: int):
    """Separable classes (a bright square in one of 2 places) on a domain-specific background."""
    labels = np.arange(n) % 2
    images = rng.integers(0, 40, (n, 3, SIZE, SIZE)).astype(np.int64) + 30 * shift
    for i, label in enumerate(labels):
        images[i, :, 4:14, 4 + 14 * label : 14 + 14 * label] += 150
    from dgmeta.training.data import DomainArrays

    return DomainArrays(np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64))


def _job_data(protocol: str):
    from dgmeta.training.data import JobData

    rng = np.random.default_rng(0)
    data = JobData(
        sources=["d0", "d1", "d2"], target="t",
        train=[_domain(rng, 14, s) for s in range(3)],
        val=[_domain(rng, 7, s) for s in range(3)],
        test=_domain(rng, 9, 3),
    )
    if protocol == "msda":
        data.target_unlabelled = _domain(rng, 10, 3)
    return data


def _train(case, ctx: DistContext, batch_size: int):
    """Train one case; returns (learner, stepper, trainer)."""
    from dgmeta.hparams import apply_overrides, default_hparams
    from dgmeta.learners import LearnerContext, create_learner
    from dgmeta.meta import create_stepper
    from dgmeta.models import create_network
    from dgmeta.runs.job import seed_everything
    from dgmeta.training.trainer import BatchSource, Trainer

    name, base, meta, protocol, overrides, _ = case
    seed_everything(0)
    hparams = apply_overrides(default_hparams(base, meta), {"lr": 0.05, "augment": "none", "optimizer": "sgd", "freeze_bn": False, **overrides})
    data = _job_data(protocol)
    # GroupNorm normalises each sample alone, so a sharded batch gives the same gradient
    network = create_network("test_efficientnet_gn", 2, "none")
    learner = create_learner(base, network, LearnerContext(2, 3, protocol, STEPS), hparams)
    stepper = create_stepper(meta, learner, hparams, STEPS, 3, 0)
    ctx.attach(stepper)
    batches = BatchSource(data, batch_size, seed=0, augment=False, dist=ctx)
    calls = int(getattr(stepper, "total_calls", STEPS))
    trainer = Trainer(learner, stepper, data, batches, calls, eval_every=2, progress=False,
                      evaluate_fn=ctx.evaluate if ctx.enabled else None)
    trainer.fit()
    return learner, stepper, trainer, data


def _history(trainer) -> list:
    return [(c.step, c.val, c.test) for c in trainer.history.checkpoints]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from dgmeta.training.trainer import evaluate

        ctx = DistContext(rank, WORLD)
        results = {}
        for case in CASES:
            learner, stepper, trainer, data = _train(case, ctx, PER_RANK_BATCH)
            sharded = ctx.evaluate(learner, data, "fp32")
            full = evaluate(learner, data, "fp32")  # every image on this rank, after buffers were averaged
            results[case[0]] = {
                "state": {k: v.detach().clone() for k, v in learner.state_dict().items()},
                "critic": {k: v.clone() for t in getattr(stepper, "terms", []) if t.name == "critic" for k, v in t.critic.state_dict().items()},
                "history": _history(trainer),
                "sharded_eval": (sharded.val, sharded.test),
                "full_eval": (full.val, full.test),
                "sync_calls": stepper.gradient_sync.calls,
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, start_method="spawn", join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_parameters_stay_identical_across_ranks(ranks, case):
    name = case[0]
    first, second = ranks[0][name], ranks[1][name]
    assert first["sync_calls"] > 0
    for key, value in first["state"].items():
        torch.testing.assert_close(second["state"][key], value, rtol=0, atol=0, msg=f"{name}: {key} differs between ranks")
    for key, value in first["critic"].items():
        torch.testing.assert_close(second["critic"][key], value, rtol=0, atol=0, msg=f"{name}: critic {key} differs")
    # the ranks trained on different data, so identical results need the averaged gradients; and
    # they did train (parameters moved away from the shared initialisation)
    start = _initial_learner(case)
    moved = max((first["state"][k] - v).abs().max().item() for k, v in start.state_dict().items() if v.is_floating_point())
    assert moved > 1e-3
    assert first["history"] == second["history"]


@pytest.mark.parametrize("case", [c for c in CASES if c[5]], ids=[c[0] for c in CASES if c[5]])
def test_two_ranks_match_one_process_on_the_global_batch(ranks, case):
    single, _, trainer, _ = _train(case, SINGLE, PER_RANK_BATCH * WORLD)
    start = _initial_learner(case).state_dict()
    ddp = ranks[0][case[0]]["state"]
    for key, value in single.state_dict().items():
        if not value.is_floating_point():
            continue
        update = (value - start[key]).abs().max().item()
        error = (ddp[key] - value).abs().max().item()
        # same update up to float summation order (MCD's |p1 - p2| amplifies that a little);
        # a rank training on its half batch alone would be off by a sizeable part of the update
        assert error <= 0.01 * update + 1e-6, f"{case[0]}: {key} differs by {error:.2e} (update {update:.2e})"
    assert [h[0] for h in ranks[0][case[0]]["history"]] == [h[0] for h in _history(trainer)]


def test_sharded_evaluation_equals_full_evaluation(ranks):
    for name, result in ranks[0].items():
        assert result["sharded_eval"] == result["full_eval"], name
        assert ranks[1][name]["sharded_eval"] == result["sharded_eval"]


def _initial_learner(case):
    from dgmeta.hparams import apply_overrides, default_hparams
    from dgmeta.learners import LearnerContext, create_learner
    from dgmeta.models import create_network
    from dgmeta.runs.job import seed_everything

    _, base, meta, protocol, overrides, _ = case
    seed_everything(0)
    hparams = apply_overrides(default_hparams(base, meta), {"augment": "none", **overrides})
    return create_learner(base, create_network("test_efficientnet_gn", 2, "none"), LearnerContext(2, 3, protocol, STEPS), hparams)


def test_sharded_batches_partition_the_global_batch():
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1).repeat(3, 1)
    labels = np.arange(20)
    single = InfiniteBatches(images, labels, 8, seed=5)
    shards = [ShardedBatches(images, labels, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(6):  # several epochs, batches crossing epoch boundaries
        expected = single.next()[1].numpy()
        got = np.concatenate([s.next()[1].numpy() for s in shards])
        np.testing.assert_array_equal(got, expected)
    assert shards[0].state_dict() == shards[1].state_dict()


def test_launch_command_and_relaunch_guard():
    cmd = launch_command(2, ["run", "pacs", "--steps", "3"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    assert cmd[-5:] == ["dgmeta", "run", "pacs", "--steps", "3"]
    assert _without_nproc(["run", "--nproc", "2", "pacs", "--nproc=4", "-q"]) == ["run", "pacs", "-q"]
    with pytest.raises(ConfigError, match="--nproc"):
        relaunch(2, ["run", "pacs"])  # not a command line that asked for --nproc


def test_single_process_context_is_inert():
    assert not SINGLE.enabled and SINGLE.is_main
    with SINGLE.main_first():
        pass
    run = NullTracking().start_run("x", {})
    run.log_metrics({"a": 1.0}, 0)
    run.finish()
    assert run.finished and run.run_id == ""


def test_dgmeta_run_nproc_2_end_to_end(tmp_path):
    """`dgmeta run --nproc 2` re-launches through torchrun; only rank 0 writes to MLflow."""
    import mlflow

    from helpers import make_folder_dataset

    root = make_folder_dataset(tmp_path / "data", per_class=6, size=24)
    db = tmp_path / "mlruns.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{db}", DGMETA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "dgmeta", "run", f"folder:{root}", "--base", "erm", "--target", "d2", "--steps", "2",
         "--batch-size", "2", "--image-size", "32", "--backbone", "test_efficientnet", "--weights", "none",
         "--eval-every", "2", "--quiet", "--nproc", "2"],
        capture_output=True, text=True, env=env, timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("MLflow parent run") == 1  # rank 1 printed nothing
    client = mlflow.tracking.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 2  # one parent, one child: nothing from rank 1
    child = next(r for r in runs if r.data.tags.get("dgmeta.role") == "child")
    assert child.data.params["world_size"] == "2"
    assert 0.0 <= child.data.metrics["test_acc"] <= 1.0
    results = Path(client.download_artifacts(child.info.run_id, "results.json", str(tmp_path / "artifacts")))
    assert json.loads(results.read_text())["target"] == "d2"


def test_gradient_averager_keeps_none_when_no_rank_has_a_gradient(tmp_path):
    # world of one over gloo in-process: the presence flags decide None vs zero
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
        a.grad = torch.full((3,), 4.0)
        GradientAverager(world_size=2)([a, b])
        torch.testing.assert_close(a.grad, torch.full((3,), 2.0))  # summed over the world, divided by 2
        assert b.grad is None
    finally:
        torch.distributed.destroy_process_group()
