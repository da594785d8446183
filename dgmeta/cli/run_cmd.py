"""`dgmeta run DATASET --base ... --meta ...` (or `--config pipelines/X.yaml`)."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from dgmeta.learners.registry import learner_class, learner_names
from dgmeta.meta.registry import meta_help
from dgmeta.runs.config import RunConfig, build_run_config


def _protocol_help() -> str:
    own = [f"{name} {learner_class(name).default_protocol}" for name in learner_names() if learner_class(name).default_protocol != "dg"]
    return "dg | msda | ssda (default: the learner's own: " + ", ".join(own + ["dg otherwise"]) + ")"


def run(
    dataset: Optional[str] = typer.Argument(None, help="pacs | office_home | domainnet | pacs-mini | folder:PATH"),
    base: Optional[str] = typer.Option(None, "--base", help=" | ".join(learner_names())),
    meta: Optional[str] = typer.Option(None, "--meta", help=meta_help()),
    protocol: Optional[str] = typer.Option(None, "--protocol", help=_protocol_help()),
    target: Optional[List[str]] = typer.Option(None, "--target", help="target domain(s); default: each domain in turn"),
    steps: Optional[int] = typer.Option(None, "--steps", help="training steps per (target, seed) [300]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="images per source domain per step [32]"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="square input size in pixels [128]"),
    seed: Optional[List[int]] = typer.Option(None, "--seed", help="seed(s) [0]"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="any timm model name [tf_efficientnet_lite0]"),
    weights: Optional[str] = typer.Option(None, "--weights", help="imagenet | none | PATH [imagenet]"),
    split: Optional[str] = typer.Option(None, "--split", help="official | random [official]"),
    shots: Optional[int] = typer.Option(None, "--shots", help="labelled target images per class under ssda [3]"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="evaluate every K steps [100]"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="write a resumable checkpoint every N steps; 0 = at every evaluation [0]"),
    resume: Optional[str] = typer.Option(None, "--resume", help="RUN_ID (parent or child) or 'auto': continue that run of the same command"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="default: $DGMETA_DATA or ./data"),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="decoded-image cache; default $DGMETA_CACHE or ~/.cache/dgmeta"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment name [dgmeta]"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 | fp16: autocast on the device (fp16: CUDA only, with loss scaling) [fp32]"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (auto: CUDA when present) [auto]"),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="data-parallel processes on this machine, launched through torchrun; --batch-size stays per process [1]"),
    cache: Optional[str] = typer.Option(None, "--cache", help="auto | disk | stream: decoded-image cache on disk, or decode on the fly (auto: stream lists over 50k images) [auto]"),
    memory: Optional[str] = typer.Option(None, "--memory", help="lean | fast: return freed memory to the OS, or keep it for the next step (faster on CPU, a few hundred MiB more) [lean]"),
    train_image_size: Optional[int] = typer.Option(None, "--train-image-size", help="train at this size, test at --image-size (FixRes) [= --image-size]"),
    average: Optional[str] = typer.Option(None, "--average", help="none | ema | swad: the weights the run evaluates, selects and saves [none]"),
    test_every_eval: bool = typer.Option(False, "--test-every-eval", help="also evaluate the target at every checkpoint (logs the oracle; slower)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="hyperparameter override key=value (repeatable)"),
    config: Optional[str] = typer.Option(None, "--config", help="pipeline spec (pipelines/*.yaml); options override it"),
    fewshot: bool = typer.Option(False, "--fewshot", help="run the few-shot stage on each target after training"),
    deterministic: bool = typer.Option(False, "--deterministic", help="deterministic torch algorithms"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Train and evaluate leave-one-domain-out, every run tracked in MLflow."""
    from dgmeta.runs.experiment import run_experiment
    from dgmeta.runs.plan import resolve_plan

    options = {
        "dataset": dataset, "base": base, "meta": meta, "protocol": protocol,
        "targets": list(target) if target else None, "steps": steps, "batch_size": batch_size,
        "image_size": image_size, "seeds": list(seed) if seed else None, "backbone": backbone,
        "weights": weights, "split": split, "shots": shots, "eval_every": eval_every, "data_root": data_root,
        "cache_dir": cache_dir, "experiment": experiment, "tracking_uri": tracking_uri, "precision": precision,
        "device": device,
        "checkpoint_every": checkpoint_every, "resume": resume,
        "nproc": nproc, "cache": cache, "memory": memory,
        "train_image_size": train_image_size, "average": average,
    }
    given = {k: v for k, v in options.items() if v is not None}
    if deterministic:
        given["deterministic"] = True
    if quiet:
        given["quiet"] = True
    if test_every_eval:
        given["test_every_eval"] = True

    if config is not None:
        from dgmeta.orchestration.spec import load_pipeline, run_pipeline

        spec = load_pipeline(config)
        run_config = spec.to_run_config(given, list(set_ or []))
        if run_config.nproc > 1:
            from dgmeta.errors import ConfigError

            raise ConfigError("--nproc is not supported with --config pipelines yet", "run the training as `dgmeta run DATASET ... --nproc N`")
        if fewshot and "fewshot" not in spec.stages:
            spec.stages.append("fewshot")
        outcome = run_pipeline(spec, run_config)
        result = outcome.get("train") if isinstance(outcome, dict) else outcome
    else:
        if dataset is None:
            from dgmeta.errors import ConfigError

            raise ConfigError("no DATASET given", "run e.g. `dgmeta run pacs --base erm`, or pass --config pipelines/X.yaml")
        run_config = build_run_config(None, given, list(set_ or []))
        if fewshot:
            run_config.fewshot = {"ways": "all", "shots": [1, 5], "episodes": 600, "methods": ["prototype", "linear"]}
        plan = resolve_plan(run_config)
        from dgmeta.training import distributed

        if run_config.nproc > 1 and not distributed.launched_by_torchrun():
            from dgmeta.device import resolve_device

            sys.exit(distributed.relaunch(run_config.nproc, device=resolve_device(run_config.device)))  # validated above, so a typo fails before any worker starts
        result = run_experiment(run_config, plan)
        if not distributed.current().is_main:
            return  # only rank 0 reports and runs the few-shot stage
        if fewshot:
            _fewshot_stage(run_config, plan, result)
    if result is not None:
        print_results(result)


def _fewshot_stage(config: RunConfig, plan, result) -> None:
    from dgmeta.runs.fewshot_stage import fewshot_stage

    fewshot_stage(config, plan, result)


def print_results(result) -> None:
    import numpy as np

    console = Console(file=sys.stdout)
    table = Table(title=f"{result.config.dataset} · {result.config.base}+{result.config.meta} · {result.protocol} · selection: training-domain validation")
    for column in ("target", "seeds", "test_acc %", "± std", "val_acc %", "selected step", "img/s"):
        table.add_column(column, justify="right" if column != "target" else "left")
    targets = list(dict.fromkeys(r.target for r in result.runs))
    for t in targets:
        runs = [r for r in result.runs if r.target == t]
        acc = np.array([r.test_acc for r in runs]) * 100
        table.add_row(
            t, str(len(runs)), f"{acc.mean():.2f}", f"{acc.std():.2f}" if len(acc) > 1 else "-",
            f"{np.mean([r.val_acc for r in runs]) * 100:.2f}", ",".join(str(r.selected_step) for r in runs),
            f"{np.mean([r.images_per_second for r in runs]):.0f}",
        )
    if len(targets) > 1:
        table.add_row("mean", "", f"{result.mean_test_acc() * 100:.2f}", "", "", "", "")
    console.print(table)
    console.print(f"MLflow parent run: {result.parent_run_id}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
