"""`dgmeta run DATASET --base ... --meta ...` (or `--config pipelines/X.yaml`)."""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from dgmeta.learners.registry import learner_class, learner_names
from dgmeta.meta.registry import meta_help
from dgmeta.runs.config import RunConfig, build_run_config


def _protocol_default() -> str:
    """The learner's own default protocol, as each learner declares it."""
    own = [f"{learner_class(name).default_protocol} for {name}" for name in learner_names() if learner_class(name).default_protocol != "dg"]
    return ", ".join(own + ["dg otherwise"])


_DEFAULTS = {f.name: f.default for f in fields(RunConfig)}


def _default(name: str) -> str:
    """What a run uses when the option is not given (the options default to None so a --config spec can fill them)."""
    return str(_DEFAULTS[name])


def run(
    dataset: Optional[str] = typer.Argument(None, help="pacs | office_home | domainnet | pacs-mini | folder:PATH (or use --config)", show_default=False),
    base: Optional[str] = typer.Option(None, "--base", help=" | ".join(learner_names()), show_default=_default("base")),
    meta: Optional[str] = typer.Option(None, "--meta", help=meta_help(), show_default=_default("meta")),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="dg | msda | ssda", show_default=_protocol_default()),
    target: Optional[List[str]] = typer.Option(None, "--target", help="target domain(s) (repeatable)", show_default="each domain in turn"),
    steps: Optional[int] = typer.Option(None, "--steps", help="training steps per (target, seed)", show_default=_default("steps")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="images per source domain per step", show_default=_default("batch_size")),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="square test (and decoding) size in pixels", show_default=_default("image_size")),
    seed: Optional[List[int]] = typer.Option(None, "--seed", help="seed(s) (repeatable)", show_default="0"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="any timm model name", show_default=_default("backbone")),
    weights: Optional[str] = typer.Option(None, "--weights", help="imagenet | none | PATH", show_default=_default("weights")),
    split: Optional[str] = typer.Option(None, "--split", help="official | random", show_default=_default("split")),
    shots: Optional[int] = typer.Option(None, "--shots", help="labelled target images per class under ssda", show_default=_default("shots")),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="evaluate every K steps", show_default=_default("eval_every")),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="write a resumable checkpoint every N steps; 0 = at every evaluation", show_default=_default("checkpoint_every")),
    resume: Optional[str] = typer.Option(None, "--resume", help="RUN_ID (parent or child) or 'auto': continue that run of the same command", show_default="start a new run"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="folder holding the datasets", show_default="$DGMETA_DATA, else ./data"),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="decoded-image cache", show_default="$DGMETA_CACHE, else ~/.cache/dgmeta"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment name", show_default=_default("experiment")),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking store", show_default="$MLFLOW_TRACKING_URI, else sqlite:///mlruns.db"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 | fp16: autocast on the device (fp16: CUDA only, with loss scaling)", show_default=_default("precision")),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (auto: CUDA when present)", show_default=_default("device")),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="data-parallel processes on this machine, launched through torchrun; --batch-size stays per process", show_default=_default("nproc")),
    cache: Optional[str] = typer.Option(None, "--cache", help="auto | disk | stream: decoded-image cache on disk, or decode on the fly (auto: stream lists over 50k images)", show_default=_default("cache")),
    memory: Optional[str] = typer.Option(None, "--memory", help="lean | fast: return freed memory to the OS, or keep it for the next step (faster on CPU, a few hundred MiB more)", show_default=_default("memory")),
    train_image_size: Optional[int] = typer.Option(None, "--train-image-size", help="train at this size, test at --image-size (FixRes)", show_default="0.8 x --image-size"),
    average: Optional[str] = typer.Option(None, "--average", help="none | ema | swad: the weights the run evaluates, selects and saves", show_default=_default("average")),
    test_every_eval: bool = typer.Option(False, "--test-every-eval/--no-test-every-eval", help="also evaluate the target at every checkpoint (logs the oracle; slower)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="hyperparameter override key=value (repeatable)", show_default="dgmeta/hparams.py defaults"),
    config: Optional[str] = typer.Option(None, "--config", help="pipeline spec (pipelines/*.yaml); options override it", show_default="none"),
    fewshot: bool = typer.Option(False, "--fewshot/--no-fewshot", help="run the few-shot stage on each target after training"),
    deterministic: bool = typer.Option(False, "--deterministic/--no-deterministic", help="deterministic torch algorithms"),
    quiet: bool = typer.Option(False, "--quiet/--no-quiet", "-q", help="no progress bars"),
) -> None:
    """Train and evaluate leave-one-domain-out, every run tracked in MLflow.

    Examples:

      dgmeta run pacs-mini --base erm --steps 10 --image-size 128 --eval-every 5 --set head_init=probe

      dgmeta run pacs --base dann --meta init --target sketch --seed 0 --seed 1

      dgmeta run --config pipelines/pacs_dann_init.yaml --set lr=0.005
    """
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
    from dgmeta.tracking.stats import summarize

    for column in ("target", "seeds", "test_acc %", "std (n-1)", "val_acc %", "selected step", "img/s"):
        table.add_column(column, justify="right" if column != "target" else "left")
    targets = list(dict.fromkeys(r.target for r in result.runs))
    for t in targets:
        runs = [r for r in result.runs if r.target == t]
        acc = np.array([r.test_acc for r in runs]) * 100
        table.add_row(
            t, str(len(runs)), f"{acc.mean():.2f}", f"{summarize(list(acc)).std:.2f}" if len(acc) > 1 else "-",  # sample std, as `compare`
            f"{np.mean([r.val_acc for r in runs]) * 100:.2f}", ",".join(str(r.selected_step) for r in runs),
            f"{np.mean([r.images_per_second for r in runs]):.0f}",
        )
    if len(targets) > 1:
        table.add_row("mean", "", f"{result.mean_test_acc() * 100:.2f}", "", "", "", "")
    console.print(table)
    if any(len([r for r in result.runs if r.target == t]) > 1 for t in targets):
        console.print("std: sample standard deviation (n-1) over seeds, as `dgmeta compare` reports it")
    console.print(f"MLflow parent run: {result.parent_run_id}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
