"""The run on a CUDA GPU computes what it computes on the CPU (marker ``cuda``; skipped without a GPU).

Each test builds the same seeded model twice, keeps one on the CPU and moves the other to the
GPU, and compares results. TF32 is switched off and cuDNN made deterministic for the comparisons:
with them on, fp32 results differ from the CPU's by more than any tolerance that still catches a
wrong gradient.

``DGMETA_CUDA_TEST_DEVICE=cpu`` runs the same code with the CPU in the GPU's place (a check of
the tests themselves on machines without a GPU; the comparisons are then trivially close).
Imports stay within what the GPU check machine has (no mlflow there: the one test that needs it
skips itself).
"""

from __future__ import annotations

import copy
import io
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgmeta.device import autocast, grad_scaler
from dgmeta.hparams import apply_overrides, default_hparams
from dgmeta.learners import Batch, LearnerContext, create_learner
from dgmeta.learners.registry import LEARNERS
from dgmeta.meta import create_stepper
from dgmeta.meta.episodes import split_batch
from dgmeta.meta.gradient import meta_gradient
from dgmeta.models import create_network
from dgmeta.runs.job import seed_everything
from dgmeta.training.stepper import StageStepper
from dgmeta.training.trainer import BatchSource, Trainer
from tests.helpers import tiny_job_data

pytestmark = pytest.mark.cuda
DEVICE = torch.device(os.environ.get("DGMETA_CUDA_TEST_DEVICE", "cuda"))
NUM_CLASSES, SOURCES, IMAGE = 3, 2, 32
#: learners whose objective draws random numbers on the device (JiGen's jigsaw): CPU and CUDA
#: generators give other draws, so only finiteness and movement are compared
RANDOM_OBJECTIVE = {"jigen"}


@pytest.fixture(autouse=True)
def _exact_cuda_arithmetic():
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


def images(n: int, shift: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    x = 0.3 + 0.1 * torch.rand(n, 3, IMAGE, IMAGE, generator=generator)
    x[torch.arange(n), y] += 0.3
    return (x + shift).clamp(0, 1), y


def make_batch(protocol: str, seed: int = 0, per_domain: int = 8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    xs, ys, ds = [], [], []
    for d in range(SOURCES):
        x, y = images(per_domain, 0.1 * d, g)
        xs.append(x), ys.append(y), ds.append(torch.full((per_domain,), d))
    if protocol == "ssda":
        x, y = images(NUM_CLASSES, 0.05, g)
        xs.append(x), ys.append(y), ds.append(torch.full((NUM_CLASSES,), SOURCES))
    target = None if protocol == "dg" else images(per_domain, 0.05, g)[0]
    return Batch(torch.cat(xs), torch.cat(ys), torch.cat(ds), target)


def make_learner(name: str, protocol: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    # no dropout in the discriminator: CPU and CUDA generators draw different masks
    pinned = {"optimizer": "sgd", "lr": 0.01, "freeze_bn": False, "disc_dropout": 0.0}
    pinned = {k: v for k, v in pinned.items() if k in default_hparams(name)}
    hparams = apply_overrides(default_hparams(name), {**pinned, **overrides})
    network = create_network("test_resnet", NUM_CLASSES, weights="none")
    return create_learner(name, network, LearnerContext(NUM_CLASSES, SOURCES + (protocol == "ssda"), protocol, 20), hparams)


def twins(name: str, protocol: str, **overrides):
    cpu = make_learner(name, protocol, **overrides)
    return cpu, copy.deepcopy(cpu).to(DEVICE)


def assert_close_to_cpu(gpu_tensors, cpu_tensors, rtol=1e-4, atol=1e-5):
    for (name, expected), actual in zip(cpu_tensors.items(), gpu_tensors.values()):
        assert actual.device == DEVICE, name
        torch.testing.assert_close(actual.detach().cpu(), expected.detach(), rtol=rtol, atol=atol, msg=f"{name} differs")


LEARNER_CASES = [(name, LEARNERS.get(name).default_protocol) for name in LEARNERS.names()]


@pytest.mark.parametrize("name, protocol", LEARNER_CASES)
def test_every_learner_takes_the_cpus_training_step(name, protocol):
    cpu, gpu = twins(name, protocol)
    batch = make_batch(protocol)
    before = {k: v.detach().clone() for k, v in gpu.state_dict().items()}
    torch.manual_seed(1)
    cpu_logs = StageStepper(cpu, cpu.hparams, 20).step(batch)
    torch.manual_seed(1)
    gpu_logs = StageStepper(gpu, gpu.hparams, 20).step(batch.to(DEVICE))
    assert all(p.device == DEVICE for p in gpu.parameters()) and all(b.device == DEVICE for b in gpu.buffers())
    assert all(np.isfinite(v) for v in gpu_logs.values()) and gpu_logs.keys() == cpu_logs.keys()
    moved = [k for k, v in gpu.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert moved, "the step changed nothing"
    if name in RANDOM_OBJECTIVE:
        return
    for key in cpu_logs:
        assert gpu_logs[key] == pytest.approx(cpu_logs[key], rel=1e-3, abs=1e-4), key
    assert_close_to_cpu(dict(gpu.named_parameters()), dict(cpu.named_parameters()), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("name, protocol", [("erm", "dg"), ("dann", "msda"), ("mcd", "msda")])
def test_meta_gradient_equals_the_cpus(name, protocol, order):
    cpu, gpu = twins(name, protocol)
    batch = make_batch(protocol)
    train, test = split_batch(batch, [0], [1])
    expected = meta_gradient(cpu, train, test, 0.5, 0.01, 1, order)
    actual = meta_gradient(gpu, train.to(DEVICE), test.to(DEVICE), 0.5, 0.01, 1, order)
    assert float(actual.val_loss) == pytest.approx(float(expected.val_loss), rel=1e-4)
    assert_close_to_cpu(actual.grads, expected.grads, rtol=1e-3, atol=1e-5)


def test_second_order_differs_from_first_order_on_cuda():
    """The exact meta-gradient really differentiates through the inner step on CUDA too."""
    _, gpu = twins("erm", "dg")
    train, test = split_batch(make_batch("dg").to(DEVICE), [0], [1])
    first = meta_gradient(gpu, train, test, 0.5, 0.5, 1, 1)
    second = meta_gradient(gpu, train, test, 0.5, 0.5, 1, 2)
    assert max(float((a - b).abs().max()) for a, b in zip(first.grads.values(), second.grads.values())) > 1e-6


def test_double_backward_on_cuda_is_pytorchs_own_and_equals_the_cpus_fast_one():
    from dgmeta.meta.double_backward import fast_double_backward

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 10, 10, generator=g, dtype=torch.float64)
    w = torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64)
    bn_w = torch.rand(8, generator=g, dtype=torch.float64) + 0.5

    def second_derivative(x, w, bn_w):
        x, w, bn_w = (t.clone().requires_grad_(True) for t in (x, w, bn_w))
        with fast_double_backward():
            y = F.conv2d(x, w, groups=8, padding=1)
            y = F.batch_norm(y, None, None, bn_w, None, training=True)
            (gw,) = torch.autograd.grad(y.pow(3).sum(), [w], create_graph=True)
        kind = type(y.grad_fn).__name__
        return torch.autograd.grad(gw.square().sum(), [x, w, bn_w]), kind

    expected, cpu_kind = second_derivative(x, w, bn_w)
    actual, gpu_kind = second_derivative(x.to(DEVICE), w.to(DEVICE), bn_w.to(DEVICE))
    if DEVICE.type == "cuda":
        assert "BatchNormBatchStats" in cpu_kind and "BatchNormBatchStats" not in gpu_kind
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.cpu(), e, rtol=1e-9, atol=1e-9)


def test_feature_critic_steps_on_cuda_as_on_the_cpu():
    cpu, gpu = twins("erm", "dg")
    batch = make_batch("dg")
    hparams = {**default_hparams("erm", "critic"), **cpu.hparams}  # the critic's own hyperparameters too
    torch.manual_seed(3)
    cpu_stepper = create_stepper("critic", cpu, hparams, 20, SOURCES, 0)
    torch.manual_seed(3)
    gpu_stepper = create_stepper("critic", gpu, hparams, 20, SOURCES, 0)
    critic = gpu_stepper.term("critic").critic if hasattr(gpu_stepper.term("critic"), "critic") else None
    cpu_logs, gpu_logs = cpu_stepper.step(batch), gpu_stepper.step(batch.to(DEVICE))
    if critic is not None:
        assert all(p.device == DEVICE for p in critic.parameters())
    for key in cpu_logs:
        assert gpu_logs[key] == pytest.approx(cpu_logs[key], rel=1e-3, abs=1e-4), key
    assert_close_to_cpu(dict(gpu.named_parameters()), dict(cpu.named_parameters()), rtol=1e-3, atol=1e-4)


def test_evaluation_on_cuda_equals_the_cpus():
    from dgmeta.evaluation.accuracy import predict_array, predict_with_loss

    cpu, gpu = twins("erm", "dg")
    data = np.random.default_rng(0).integers(0, 255, (40, 3, IMAGE, IMAGE), dtype=np.uint8)
    labels = np.arange(40) % NUM_CLASSES
    cpu_pred, cpu_loss = predict_with_loss(cpu, data, labels)
    gpu_pred, gpu_loss = predict_with_loss(gpu, data, labels)
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4)
    assert np.array_equal(gpu_pred, cpu_pred) and np.array_equal(predict_array(gpu, data)[0], cpu_pred)


def test_fewshot_maml_adapts_on_cuda_as_on_the_cpu():
    from dgmeta.evaluation.fewshot import run_fewshot

    torch.manual_seed(0)
    network = create_network("test_resnet", NUM_CLASSES, weights="none")
    meta = {"meta_mode": "init", "hparams": {"inner_lr": 0.01, "inner_steps": 1}}
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(NUM_CLASSES), 8)
    data = rng.integers(0, 120, (len(labels), 3, IMAGE, IMAGE), dtype=np.uint8)
    data[np.arange(len(labels)), labels] += 100  # class = a brighter channel
    options = dict(ways=NUM_CLASSES, shots=[2], queries=4, episodes=3, methods=["prototype", "maml"], seed=0, progress=False)
    cpu_report = run_fewshot(network, meta, data, labels, **options)
    gpu_network = copy.deepcopy(network).to(DEVICE)
    gpu_report = run_fewshot(gpu_network, meta, data, labels, **options)
    assert all(p.device == DEVICE for p in gpu_network.parameters())
    for c, g in zip(cpu_report.results, gpu_report.results):
        assert (c.method, c.shots) == (g.method, g.shots)
        assert g.accuracy == pytest.approx(c.accuracy, abs=1 / 12 + 1e-9)  # at most one query of an episode flips


def make_trainer(base: str, meta: str, steps: int, precision: str = "fp32", **options) -> Trainer:
    seed_everything(0, deterministic=True)
    data = tiny_job_data()
    hparams = apply_overrides(default_hparams(base, meta), {"dropout": 0.2})  # dropout: the device's RNG matters
    network = create_network("test_resnet", 2, "none", dropout=0.2)
    learner = create_learner(base, network, LearnerContext(2, 2, "msda", steps), hparams).to(DEVICE)
    stepper = create_stepper(meta, learner, hparams, steps, 2, 0)
    stepper.scaler = grad_scaler(precision, DEVICE)
    batches = BatchSource(data, 4, 0, augment=True, device=DEVICE)
    return Trainer(learner, stepper, data, batches, steps, eval_every=3, progress=False, precision=precision, **options)


def test_batches_are_drawn_and_augmented_on_the_device():
    trainer = make_trainer("dann", "none", 2)
    assert trainer.batches.generator.device.type == DEVICE.type
    batch = trainer.batches.next()
    assert {t.device.type for t in (batch.x, batch.y, batch.domain, batch.target_x)} == {DEVICE.type}


@pytest.mark.parametrize("base, meta", [("dann", "none"), ("dann", "init")])
def test_resuming_on_cuda_continues_exactly(base, meta):
    from dgmeta.training.checkpointing import capture_rng

    steps = 6
    straight = make_trainer(base, meta, steps)
    straight.fit()
    saved = {}

    def keep(step, state):
        if step == 4:
            buffer = io.BytesIO()
            torch.save(state, buffer)  # as a checkpoint file: loaded back onto the CPU
            saved["state"] = buffer.getvalue()

    make_trainer(base, meta, steps, checkpoint_every=4, on_checkpoint=keep).fit()
    if DEVICE.type == "cuda":
        assert len(capture_rng()["cuda"]) == torch.cuda.device_count()
    resumed = make_trainer(base, meta, steps)
    torch.manual_seed(123)
    if DEVICE.type == "cuda":
        torch.cuda.manual_seed_all(123)  # whatever the process did before, the checkpoint decides
    resumed.load_state_dict(torch.load(io.BytesIO(saved["state"]), map_location="cpu", weights_only=True))
    resumed.fit()
    for (name, expected), actual in zip(straight.learner.state_dict().items(), resumed.learner.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6, msg=f"{name} differs")
    for name, values in straight.losses.items():
        np.testing.assert_allclose(np.array(resumed.losses[name]), np.array(values), rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_track_fp32(precision):
    if precision == "fp16" and DEVICE.type == "cpu":
        pytest.skip("fp16 is CUDA-only in dgmeta")
    reference, low = twins("dann", "msda")
    reference = reference.to(DEVICE)
    batch = make_batch("msda").to(DEVICE)
    fp32 = StageStepper(reference, reference.hparams, 20)
    mixed = StageStepper(low, low.hparams, 20)
    mixed.scaler = grad_scaler(precision, DEVICE)
    for _ in range(3):
        expected = fp32.step(batch)
        with autocast(precision, DEVICE.type):
            actual = mixed.step(batch)
        assert all(np.isfinite(v) for v in actual.values())
        assert actual["loss"] == pytest.approx(expected["loss"], rel=5e-2, abs=1e-2)
    assert all(p.dtype == torch.float32 for p in low.parameters())  # autocast keeps fp32 master weights
    if precision == "fp16":
        assert mixed.scaler.get_scale() > 0 and "scaler" in mixed.state_dict()
    drift = max(float((a - b).abs().max()) for a, b in zip(reference.parameters(), low.parameters()))
    assert 0 < drift < 0.05


@pytest.mark.parametrize("order, floor", [(1, 0.9), (2, 0.8)])
def test_meta_gradient_under_bf16_points_where_fp32_does(order, floor):
    """bf16 costs the meta-gradient more than a plain gradient: on the CPU (test_resnet, this
    batch) cosine 0.92 (first order) and 0.83 (second order) to fp32, against 0.993 for a plain
    gradient; the floors hold those figures with a margin, and catch a broken (random or
    sign-flipped) meta-gradient under autocast."""
    _, gpu = twins("erm", "dg")
    train, test = split_batch(make_batch("dg").to(DEVICE), [0], [1])
    expected = meta_gradient(gpu, train, test, 0.5, 0.01, 1, order)
    with autocast("bf16", DEVICE.type):
        actual = meta_gradient(gpu, train, test, 0.5, 0.01, 1, order)
    cosine = F.cosine_similarity(
        torch.cat([g.flatten() for g in actual.grads.values()]).float(), torch.cat([g.flatten() for g in expected.grads.values()]), dim=0
    )
    assert cosine > floor


def test_a_tiny_run_on_cuda_records_its_device(tmp_path):
    pytest.importorskip("mlflow")  # the full install (the GPU check machine has neither)
    pytest.importorskip("pydantic")
    from mlflow.tracking import MlflowClient

    from dgmeta.runs.config import RunConfig
    from dgmeta.runs.experiment import run_experiment
    from tests.helpers import make_folder_dataset

    data = make_folder_dataset(tmp_path / "toy", per_class=6, size=24)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    config = RunConfig(
        dataset=f"folder:{data}", base="dann", targets=["d2"], steps=4, seeds=[0], split="random", tracking_uri=uri,
        backbone="test_resnet", weights="none", image_size=24, train_image_size=24, batch_size=4, eval_every=2,
        quiet=True, device=str(DEVICE) if DEVICE.type == "cpu" else "cuda", average="ema",
    )
    (run,) = run_experiment(config).runs
    params = MlflowClient(tracking_uri=uri).get_run(run.run_id).data.params
    assert params["device"] == config.device and params["device.resolved"].startswith(DEVICE.type)
