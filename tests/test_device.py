"""Device and precision selection (dgmeta.device) and where each part of a run computes, on the CPU.

A fake CUDA (``torch.cuda.is_available`` and ``device_count`` patched) covers the selection paths
that need a GPU; torch's ``meta`` device stands in for "another device" where tensors must follow
the model. The real GPU runs are in tests/test_cuda.py (marker ``cuda``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import nn

from dgmeta import device as dev
from dgmeta.cli.main import main
from dgmeta.errors import ConfigError
from dgmeta.runs.config import RunConfig
from tests.helpers import make_folder_dataset


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with two CUDA devices, as far as device selection can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return monkeypatch


# -- --device ------------------------------------------------------------------------------------
def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device(None) == torch.device("cpu")
    assert dev.resolve_device(" CPU ") == torch.device("cpu")


def test_auto_and_cuda_take_the_processes_gpu(fake_cuda):
    assert dev.resolve_device("auto") == torch.device("cuda", 0)
    assert dev.resolve_device("cuda") == torch.device("cuda", 0)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    fake_cuda.setenv("LOCAL_RANK", "1")  # torchrun's second rank
    assert dev.resolve_device("cuda") == torch.device("cuda", 1)
    assert dev.resolve_device("auto") == torch.device("cuda", 1)


def test_a_gpu_index_the_machine_lacks_is_one_line(fake_cuda):
    with pytest.raises(ConfigError) as info:
        dev.resolve_device("cuda:2")
    assert "2 CUDA device(s), no cuda:2" in str(info.value) and "cuda:0..cuda:1" in str(info.value)


def test_cuda_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError) as info:
            dev.resolve_device(name)
        assert "no usable CUDA GPU" in str(info.value) and "--device cpu" in str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "meta", "mps0", ""])
def test_unknown_device_names(name):
    with pytest.raises(ConfigError, match="unknown --device"):
        dev.resolve_device(name)


def test_run_config_checks_the_device_and_does_not_hash_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no usable CUDA GPU"):
        RunConfig(device="cuda").validate()
    assert RunConfig(device="cpu").config_hash() == RunConfig(device="auto").config_hash()
    assert RunConfig(precision="bf16").config_hash() != RunConfig().config_hash()


def test_device_cuda_here_is_a_one_line_error_before_any_mlflow_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = make_folder_dataset(tmp_path / "toy", per_class=4, size=16)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", f"folder:{data}", "--device", "cuda", "--backbone", "test_resnet", "--weights", "none", "--tracking-uri", uri, "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda: this machine has no usable CUDA GPU") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "store.db").exists() or not MlflowClient(tracking_uri=uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=uri).search_experiments()]
    )


def test_pipeline_specs_and_sweeps_take_the_device(tmp_path, monkeypatch):
    from dgmeta.cli.sweep_cmd import _base_config
    from dgmeta.orchestration.spec import parse_pipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)  # whatever CPU runs the test
    spec = parse_pipeline({"dataset": "pacs", "device": "cpu", "precision": "bf16"})
    assert spec.to_run_config().device == "cpu"
    with pytest.raises(ConfigError, match="no usable CUDA GPU"):
        parse_pipeline({"dataset": "pacs", "device": "cuda"}).to_run_config()
    config, _ = _base_config("pacs", {"device": "cpu", "precision": None}, [])
    assert config.device == "cpu"


# -- --precision ---------------------------------------------------------------------------------
def test_cpuinfo_parsing():
    assert dev.cpuinfo_has_native_bf16("processor : 0\nflags : fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert dev.cpuinfo_has_native_bf16("flags\t\t: sse avx2 amx_bf16\n")
    assert dev.cpuinfo_has_native_bf16("Features\t: fp asimd bf16 i8mm\n")  # Arm
    # the AMD EPYC of issue 16: avx2 only
    assert not dev.cpuinfo_has_native_bf16("model name : AMD EPYC 7B13\nflags : fpu sse4_2 avx avx2 fma\n")
    assert not dev.cpuinfo_has_native_bf16("model name : something avx512_bf16 in a name\n")


def test_bf16_on_a_cpu_without_native_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError) as info:
        dev.check_precision("bf16", torch.device("cpu"))
    text = str(info.value)
    assert "no native bf16" in text and "use --precision fp32" in text and "\n" not in text
    with pytest.raises(ConfigError, match="no native bf16"):
        RunConfig(precision="bf16", device="cpu").validate()
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.check_precision("bf16", torch.device("cpu")) == "bf16"


def test_fp16_needs_cuda_and_no_meta_mode(fake_cuda):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        dev.check_precision("fp16", torch.device("cpu"))
    assert dev.check_precision("fp16", torch.device("cuda", 0)) == "fp16"
    with pytest.raises(ConfigError, match="meta-gradient"):
        dev.check_precision("fp16", torch.device("cuda", 0), meta="init")
    with pytest.raises(ConfigError, match="choose fp32, bf16 or fp16"):
        dev.check_precision("fp8", torch.device("cpu"))


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_follows_the_device_type():
    x = torch.randn(4, 8)
    w = torch.randn(8, 3)
    assert (x @ w).dtype == torch.float32
    with dev.autocast("fp32", "cpu"):
        assert (x @ w).dtype == torch.float32
    with dev.autocast("bf16", "cpu"):
        assert (x @ w).dtype == torch.bfloat16
    ctx = dev.autocast("fp16", "cuda")
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.float16


def test_grad_scaler_only_for_fp16():
    assert dev.grad_scaler("fp32", torch.device("cpu")) is None
    assert dev.grad_scaler("bf16", torch.device("cpu")) is None
    assert isinstance(dev.grad_scaler("fp16", torch.device("cpu")), torch.amp.GradScaler)


# -- the fp16 scaler inside the stepper (run on the CPU's scaler: same code path) -----------------
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.featurizer = nn.Linear(4, 4)
        self.classifier = nn.Linear(4, 2)


def _stepper(scaler):
    from dgmeta.learners import LearnerContext
    from dgmeta.learners.base import Learner, Objective
    from dgmeta.training.stepper import StageStepper

    class ERMish(Learner):
        name = "tiny"

        def __init__(self):
            net = _Tiny()
            net.feature_dim = 4
            super().__init__(net, LearnerContext(2, 2), {})
            self.blow_up = False

        def objective(self, stage, batch, progress):
            loss = F.cross_entropy(self.predict(batch.x), batch.y)
            if self.blow_up:  # the same finite loss, but a gradient of 1e36 that overflows once scaled
                w = self.featurizer.weight.sum()
                loss = loss + (w - w.detach()) * 1e36
            return Objective(loss, {})

    learner = ERMish()
    from dgmeta.hparams import apply_overrides, default_hparams

    plain_sgd = {"lr": 0.1, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr_schedule": "constant", "head_lr_mult": 1.0, "freeze_bn": False}
    stepper = StageStepper(learner, apply_overrides(default_hparams("erm"), plain_sgd), 10)
    stepper.scaler = scaler
    return learner, stepper


def _batch():
    from dgmeta.learners import Batch

    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g), torch.zeros(8, dtype=torch.long))


def test_scaled_step_equals_the_plain_step_and_overflow_skips_it():
    plain_learner, plain = _stepper(None)
    scaled_learner, scaled = _stepper(torch.amp.GradScaler("cpu", init_scale=2.0**10))
    batch = _batch()
    plain.step(batch)
    scaled.step(batch)
    for a, b in zip(plain_learner.parameters(), scaled_learner.parameters()):
        assert torch.allclose(a, b, atol=1e-6)  # a power-of-two scale unscales exactly
    assert scaled.state_dict()["scaler"]["scale"] == 2.0**10

    before = [p.detach().clone() for p in scaled_learner.parameters()]
    scaled_learner.blow_up = True
    scaled.step(batch)  # inf gradients: the scaler skips the step and halves the scale
    assert all(torch.equal(a, b) for a, b in zip(before, scaled_learner.parameters()))
    assert scaled.scaler.get_scale() == 2.0**9

    _, resumed = _stepper(torch.amp.GradScaler("cpu"))
    resumed.load_state_dict(scaled.state_dict())
    assert resumed.scaler.get_scale() == 2.0**9


# -- where things compute ------------------------------------------------------------------------
def test_module_device_and_host_to_device():
    assert dev.module_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert dev.module_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert dev.module_device(nn.ReLU()) == torch.device("cpu")
    x = torch.arange(6, dtype=torch.uint8)
    assert dev.host_to_device(x, torch.device("cpu")) is x
    assert dev.host_to_device(x, torch.device("meta")).device.type == "meta"


def test_batch_source_draws_on_its_device():
    from dgmeta.training.data import DomainArrays, JobData
    from dgmeta.training.trainer import BatchSource

    rng = np.random.default_rng(0)
    arrays = lambda n: DomainArrays(rng.integers(0, 255, (n, 3, 16, 16), dtype=np.uint8), np.arange(n) % 2)  # noqa: E731
    data = JobData(["a", "b"], "c", [arrays(6), arrays(6)], [arrays(4), arrays(4)], arrays(4), target_unlabelled=arrays(6))
    source = BatchSource(data, 3, seed=0, augment=True, train_size=12, device="cpu")
    assert source.generator.device == torch.device("cpu")
    batch = source.next()
    assert batch.x.shape == (6, 3, 12, 12) and batch.x.dtype == torch.float32 and batch.target_x.shape == (3, 3, 12, 12)
    assert batch.y.device == batch.domain.device == batch.x.device == torch.device("cpu")
    again = BatchSource(data, 3, seed=0, augment=True, train_size=12)
    assert torch.equal(again.next().x, batch.x)  # the default device draws the same batch


def test_averages_follow_the_model_to_its_device():
    from dgmeta.training.averaging import _on_device_of

    cpu = {"w": torch.ones(2)}
    on_meta = _on_device_of(cpu, {"w": torch.empty(2, device="meta")})
    assert on_meta["w"].device.type == "meta"
    assert _on_device_of(cpu, {"w": torch.zeros(2)}) is cpu
    assert _on_device_of(None, {"w": torch.zeros(2)}) is None


def test_evaluation_computes_where_the_model_is():
    from dgmeta.evaluation.accuracy import predict_array, predict_with_loss

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    images = np.random.default_rng(0).integers(0, 255, (10, 3, 4, 4), dtype=np.uint8)
    labels = np.arange(10) % 2
    pred, _ = predict_array(model, images)
    pred_loss, loss = predict_with_loss(model, images, labels)
    with torch.no_grad():
        logits = model(torch.from_numpy(images).float() / 255)
    assert np.array_equal(pred, logits.argmax(1).numpy()) and np.array_equal(pred_loss, pred)
    assert loss == pytest.approx(float(F.cross_entropy(logits, torch.from_numpy(labels))), rel=1e-5)
    with pytest.raises((NotImplementedError, RuntimeError)):  # a meta-device model gets meta inputs, not CPU ones
        predict_array(model.to("meta"), images)


def test_fast_double_backward_substitutes_cpu_tensors_only():
    from dgmeta.meta.double_backward import fast_double_backward

    weight = torch.randn(4, 1, 3, 3, requires_grad=True)
    with fast_double_backward():
        on_cpu = F.conv2d(torch.randn(1, 4, 8, 8, requires_grad=True), weight, groups=4, padding=1)
        on_meta = F.conv2d(torch.randn(1, 4, 8, 8, device="meta", requires_grad=True), weight.detach().to("meta").requires_grad_(), groups=4, padding=1)
    assert "GroupedConv2d" in type(on_cpu.grad_fn).__name__
    assert "GroupedConv2d" not in type(on_meta.grad_fn).__name__  # PyTorch's own convolution


# -- CPU-only measures, DDP backend, RNG ----------------------------------------------------------
def test_omp_wait_policy_is_left_alone_for_runs_expected_on_cuda(monkeypatch):
    from dgmeta import process

    monkeypatch.setattr(process.os.path, "exists", lambda path: False)
    assert process.run_on_cuda_expected(["run", "pacs", "--device", "cuda"])
    assert process.run_on_cuda_expected(["run", "pacs", "--device=cuda:1"])
    assert not process.run_on_cuda_expected(["run", "pacs"])  # auto, no GPU here
    monkeypatch.setattr(process.os.path, "exists", lambda path: path == "/dev/nvidia0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert process.run_on_cuda_expected(["run", "pacs"])
    assert not process.run_on_cuda_expected(["run", "pacs", "--device", "cpu"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not process.run_on_cuda_expected(["run", "pacs"])


def test_importing_dgmeta_leaves_the_process_alone():
    """Tuning is the entry point's (dgmeta.cli.main, benchmarks, conftest), not the library's."""
    import subprocess
    import sys

    code = "import os, dgmeta, dgmeta.runs.experiment; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"


def test_ddp_backend_follows_the_device(monkeypatch):
    from dgmeta.training import distributed

    monkeypatch.delenv("DGMETA_DIST_BACKEND", raising=False)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    assert distributed.default_backend(torch.device("cpu")) == "gloo"
    assert distributed.default_backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    assert distributed.default_backend(torch.device("cuda", 0)) == "gloo"


def test_nproc_on_cuda_means_gpus_and_skips_the_cpu_thread_caps(fake_cuda):
    from dgmeta.training import distributed

    with pytest.raises(ConfigError, match="needs 3 GPUs, this machine has 2"):
        distributed.relaunch(3, ["run", "pacs", "--nproc", "3"], device=torch.device("cuda", 0))
    with pytest.raises(ConfigError, match="same GPU"):
        distributed.relaunch(2, ["run", "pacs", "--device", "cuda:1", "--nproc", "2"], device=torch.device("cuda", 1))
    seen = {}
    fake_cuda.setattr(distributed.subprocess, "call", lambda cmd, env: seen.update(env=env, cmd=cmd) or 0)
    fake_cuda.delenv("OMP_NUM_THREADS", raising=False)
    assert distributed.relaunch(2, ["run", "pacs", "--nproc", "2"], device=torch.device("cuda", 0)) == 0
    assert "OMP_NUM_THREADS" not in seen["env"] and "--nproc" not in seen["cmd"]
    assert distributed.relaunch(2, ["run", "pacs", "--nproc", "2"], device=torch.device("cpu")) == 0
    assert seen["env"]["OMP_NUM_THREADS"] == str(max(1, (__import__("os").cpu_count() or 1) // 2))


def test_rng_state_of_a_cpu_run_has_no_cuda_part_and_restores(monkeypatch):
    from dgmeta.training.checkpointing import capture_rng, restore_rng

    state = capture_rng()
    assert state["cuda"] == []
    expected = torch.rand(3)
    restore_rng(state)
    assert torch.equal(torch.rand(3), expected)
    # a CUDA run's checkpoint resumed on a machine with another GPU count: one line, not a crash
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="random state of 2 GPU"):
        restore_rng({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2})
