"""The PACS part of benchmarks/speed/gpu_check.sh: ERM, DANN and DANN + ``--meta init`` on one target,
then a bare timm step of the same backbone and batch, all into one JSON.

Runs without mlflow (the GPU machine has none): it drives the same pieces ``dgmeta run`` does
(``resolve_plan``, ``prepare_job_data``, the learner, its stepper, ``BatchSource`` and
``Trainer``) with no tracking layer, on the data and weights ``scripts/pack_gpu_check.py`` packed.

    python benchmarks/speed/gpu_check.py --pack gpu_pack --out $OUT/gpu_check.json [--steps 2000]

Environment overrides for a quick run on a CPU: GPU_CHECK_STEPS, GPU_CHECK_BATCH, GPU_CHECK_EVAL_EVERY,
GPU_CHECK_BARE_STEPS, GPU_CHECK_DEVICE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

RUNS = (("erm", "none"), ("dann", "none"), ("dann", "init"))


def unpack(pack: Path, where: Path) -> Path:
    root = where / "PACS"
    if not root.is_dir():
        with zipfile.ZipFile(pack / "PACS.zip") as archive:
            archive.extractall(where)
    return root


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one(base: str, meta: str, args, data_root: Path, weights: Path) -> dict:
    from dgmeta.device import configure_device, grad_scaler, resolve_device
    from dgmeta.learners import LearnerContext, create_learner
    from dgmeta.meta import create_stepper, total_calls
    from dgmeta.models import create_network
    from dgmeta.models.freezing import freeze_early_levels
    from dgmeta.runs.config import RunConfig
    from dgmeta.runs.job import seed_everything
    from dgmeta.runs.plan import resolve_plan
    from dgmeta.training.averaging import create_averager
    from dgmeta.training.data import prepare_job_data
    from dgmeta.training.trainer import BatchSource, Trainer

    config = RunConfig(
        dataset=f"folder:{data_root}", base=base, meta=meta, targets=[args.target], steps=args.steps, seeds=[0],
        batch_size=args.batch, image_size=args.image_size, split="random", eval_every=args.eval_every,
        weights=str(weights), device=args.device, precision=args.precision, quiet=True, cache_dir=str(args.cache),
    )
    plan = resolve_plan(config)
    device = resolve_device(config.device)
    configure_device(device)
    seed_everything(0)
    started = time.perf_counter()
    data = prepare_job_data(plan.dataset, args.target, plan.protocol, config.image_size, config.cache_dir, config.shots, 0, False, config.cache)
    prepare_seconds = time.perf_counter() - started
    network = create_network(config.backbone, len(plan.dataset.classes), config.weights, float(plan.hparams["dropout"]), config.channels_last)
    freeze_early_levels(network.featurizer.body, int(plan.hparams["freeze_levels"]))
    context = LearnerContext(len(plan.dataset.classes), len(data.sources), plan.protocol, config.steps)
    learner = create_learner(base, network, context, plan.hparams).to(device)
    stepper = create_stepper(meta, learner, plan.hparams, config.steps, len(data.sources), 0)
    stepper.scaler = grad_scaler(config.precision, device)
    batches = BatchSource(data, config.batch_size, 0, augment=plan.hparams["augment"] != "none", train_size=config.effective_train_size, device=device)
    trainer = Trainer(
        learner, stepper, data, batches, total_calls(stepper), config.eval_every, config.precision, progress=False,
        averager=create_averager(config.average, plan.hparams), test_every_eval=False, recompute_bn=not plan.hparams["freeze_bn"],
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    outcome = trainer.fit()
    selected = outcome.history.selected()
    return {
        "base": base, "meta": meta, "protocol": plan.protocol, "steps": config.steps, "batch_per_domain": config.batch_size,
        "train_image_size": config.effective_train_size, "test_image_size": config.image_size,
        "images_per_second": outcome.images_per_second, "data_wait_fraction": outcome.data_wait_fraction,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "test_acc": selected.test[args.target], "val_acc": selected.val_mean, "selected_step": selected.step,
        "selected_weights": selected.weights, "train_seconds": outcome.seconds, "data_prepare_seconds": prepare_seconds,
    }


def bare_timm_step(args, images: int, size: int, weights: Path) -> dict:
    """Forward, backward and AdamW step of the plain timm backbone on a batch already on the device:
    the ceiling the pipeline's step is measured against."""
    import timm

    from dgmeta.device import autocast, configure_device, grad_scaler, resolve_device

    device = resolve_device(args.device)
    configure_device(device)
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=7).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = grad_scaler(args.precision, device)
    x = torch.rand(images, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (images,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(args.precision, device.type):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    for _ in range(min(10, args.bare_steps)):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.bare_steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"images_per_step": images, "image_size": size, "steps": args.bare_steps, "images_per_second": images * args.bare_steps / seconds}


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, default=REPO / "gpu_pack")
    parser.add_argument("--out", type=Path, default=Path(env("OUT", str(REPO / "benchmarks" / "out"))) / "gpu_check.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dgmeta_gpu_check"))
    parser.add_argument("--target", default="art_painting")
    parser.add_argument("--steps", type=int, default=int(env("GPU_CHECK_STEPS", 2000)))
    parser.add_argument("--batch", type=int, default=int(env("GPU_CHECK_BATCH", 32)))
    parser.add_argument("--eval-every", type=int, default=int(env("GPU_CHECK_EVAL_EVERY", 200)))
    parser.add_argument("--bare-steps", type=int, default=int(env("GPU_CHECK_BARE_STEPS", 100)))
    parser.add_argument("--device", default=env("GPU_CHECK_DEVICE", "auto"))
    parser.add_argument("--precision", default=env("GPU_CHECK_PRECISION", "fp32"))
    parser.add_argument("--tests-rc", type=int, default=None, help="exit status of the cuda tests run before")
    args = parser.parse_args(argv)
    manifest = json.loads((args.pack / "manifest.json").read_text())
    args.image_size = int(manifest["size"])
    args.cache = args.work / "cache"
    data_root = unpack(args.pack, args.work)
    weights = args.pack / "tf_efficientnet_lite0.safetensors"
    from dgmeta.device import device_label, resolve_device

    device = resolve_device(args.device)
    report = {
        "device": device_label(device), "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "precision": args.precision, "target": args.target, "pack": manifest, "cuda_tests_exit_status": args.tests_rc,
        "runs": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for base, meta in RUNS:
        name = f"{base}+{meta}"
        report["runs"][name] = train_one(base, meta, args, data_root, weights)
        args.out.write_text(json.dumps(report, indent=2))  # partial results survive a timeout
        print(name, json.dumps(report["runs"][name]), flush=True)
    erm = report["runs"]["erm+none"]
    sources = len(manifest["images"]) - 1
    report["bare_timm"] = bare_timm_step(args, sources * args.batch, erm["train_image_size"], weights)
    report["ratio_to_bare_timm"] = {name: run["images_per_second"] / report["bare_timm"]["images_per_second"] for name, run in report["runs"].items()}
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"bare_timm": report["bare_timm"], "ratio_to_bare_timm": report["ratio_to_bare_timm"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
