"""`dgmeta sweep SPEC_OR_DATASET --grid key=v1,v2 ... | --random N --seed S [--jobs 2]`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _base_config(source: Optional[str], options: dict, sets: list[str]):
    """A RunConfig from a pipeline spec (when SOURCE is a YAML file) or from a dataset name and options."""
    from dgmeta.errors import ConfigError
    from dgmeta.orchestration.spec import load_pipeline, parse_pipeline

    given = {k: v for k, v in options.items() if v is not None}
    if source and (source.endswith((".yaml", ".yml")) or Path(source).is_file()):
        return load_pipeline(source).to_run_config(given, sets), Path(source).stem
    if source:
        given["dataset"] = source
    if "dataset" not in given:
        raise ConfigError("no pipeline spec or dataset given", "run e.g. `dgmeta sweep pipelines/pacs_erm.yaml --grid lr=0.01,0.001`")
    spec = parse_pipeline({"dataset": given.pop("dataset")})
    return spec.to_run_config(given, sets), f"{spec.dataset}-sweep"


def sweep(
    source: Optional[str] = typer.Argument(None, metavar="SPEC_OR_DATASET", help="pipelines/X.yaml, or a dataset name with the options below", show_default=False),
    grid: Optional[List[str]] = typer.Option(None, "--grid", help="key=v1,v2,... (repeatable; the product is swept)", show_default="one setting: the defaults"),
    random_count: Optional[int] = typer.Option(None, "--random", help="N seeded random hyperparameter draws (instead of --grid)", show_default="no random draws"),
    sweep_seed: int = typer.Option(0, "--seed", help="seed of the random draws (--random)"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="training seeds (trials), comma-separated, e.g. 0,1,2", show_default="the spec's, else 0"),
    target: Optional[List[str]] = typer.Option(None, "--target", help="target domain(s) (repeatable)", show_default="the spec's, else every domain"),
    base: Optional[str] = typer.Option(None, "--base", help="erm | dann | mcd | jigen | mme", show_default="the spec's, else erm"),
    meta: Optional[str] = typer.Option(None, "--meta", help="none | init | critic | init+critic", show_default="the spec's, else none"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="dg | msda | ssda", show_default="the spec's, else the learner's"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="any timm model name", show_default="the spec's, else tf_efficientnet_lite0"),
    weights: Optional[str] = typer.Option(None, "--weights", help="imagenet | none | PATH", show_default="the spec's, else imagenet"),
    steps: Optional[int] = typer.Option(None, "--steps", help="training steps per (target, seed)", show_default="the spec's, else 600"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="images per source domain per step", show_default="the spec's, else 16"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="square test size in pixels", show_default="the spec's, else 224"),
    split: Optional[str] = typer.Option(None, "--split", help="official | random", show_default="the spec's, else official"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="evaluate every K steps", show_default="the spec's, else 60"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N", show_default="the spec's, else auto"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 | fp16", show_default="the spec's, else fp32"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="folder holding the datasets", show_default="$DGMETA_DATA, else ./data"),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="decoded-image cache", show_default="$DGMETA_CACHE, else ~/.cache/dgmeta"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment name", show_default="the spec's, else dgmeta"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking store", show_default="$MLFLOW_TRACKING_URI, else sqlite:///mlruns.db"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="pin a hyperparameter key=value for every setting (repeatable)", show_default="none pinned"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="jobs run at once, in separate processes"),
    select: str = typer.Option("training-domain", "--select", help="how the summary picks a setting per (target, seed): training-domain | leave-one-domain-out | oracle (oracle uses target labels)"),
    dry_run: bool = typer.Option(False, "--dry-run/--no-dry-run", help="list the jobs without running them"),
) -> None:
    """Sweep hyperparameters x seeds x targets; finished runs with the same config hash are skipped.

    At the end, each target's result is selected DomainBed-style: per seed (trial) the setting
    chosen by --select, then mean ± 95% CI over seeds.

    Examples:

      dgmeta sweep pacs-mini --grid lr=0.01,0.001 --seeds 0,1 --steps 2 --image-size 64

      dgmeta sweep pipelines/pacs_erm.yaml --random 8 --seed 0 --seeds 0,1,2 --jobs 2

      dgmeta sweep pacs-mini --grid lr=0.01,0.001 --dry-run
    """
    from dgmeta.errors import ConfigError
    from dgmeta.orchestration.sweep import grid_points, parse_grid, plan_sweep, random_points, run_sweep
    from dgmeta.tracking.compare import parse_selection

    select = parse_selection(select)

    if grid and random_count is not None:
        raise ConfigError("--grid and --random both given", "sweep either a grid or random draws")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} must be at least 1", "pass e.g. --jobs 2")
    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds {seeds!r} is not a comma-separated list of integers", "write e.g. --seeds 0,1,2") from None
    options = {
        "targets": list(target) if target else None, "seeds": seed_list, "base": base, "meta": meta, "protocol": protocol,
        "backbone": backbone, "weights": weights, "steps": steps, "batch_size": batch_size, "image_size": image_size,
        "split": split, "eval_every": eval_every, "device": device, "precision": precision, "data_root": data_root, "cache_dir": cache_dir,
        "experiment": experiment, "tracking_uri": tracking_uri, "quiet": True,
    }
    config, name = _base_config(source, options, list(set_ or []))
    points = random_points(config, random_count, sweep_seed) if random_count is not None else grid_points(parse_grid(list(grid or [])))
    plan = plan_sweep(config, points, name=name)
    typer.echo(
        f"sweep {name}: {len(points)} setting(s) x {len(config.seeds)} seed(s), {plan.total} runs: "
        f"{plan.done} already finished, {len(plan.jobs)} job(s) to run (experiment {config.experiment})"
    )
    if not plan.jobs:
        typer.echo("nothing to run: every run of the sweep has finished")
        _print_selection(config, plan, select)
        return
    if dry_run:
        for job in plan.jobs:
            typer.echo(f"  {job.point.label()} seed {job.config.seeds[0]} → {','.join(job.config.targets or [])}")
        return
    report = run_sweep(plan, jobs=jobs, echo=typer.echo)
    typer.echo(f"done: {len(report.completed)} job(s) finished, {len(report.failed)} failed")
    _print_selection(config, plan, select)
    if report.failed:
        raise typer.Exit(1)


def _print_selection(config, plan, select: str) -> None:
    from dgmeta.orchestration.sweep import sweep_results
    from dgmeta.tracking.compare_report import print_table

    comparison = sweep_results(config, plan, select)
    print_table(comparison)  # with no rows it still prints why (e.g. leave-one-domain-out over one target)
    if comparison.rows:
        typer.echo("other rules: the same command with --select training-domain | leave-one-domain-out | oracle (nothing is retrained)")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
