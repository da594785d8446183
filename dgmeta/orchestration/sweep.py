"""Sweeps: hyperparameter settings x seeds x targets, each (target, seed) an MLflow child run.

Settings come from a grid (``--grid lr=0.01,0.001 --grid dropout=0,0.5``: the product; a grid
key may also be a run option such as ``meta=none,init``) or from seeded random draws of
``dgmeta.hparams.random_hparams`` (``--random 8 --seed 0``; values pinned by the spec or
``--set`` are kept). A sweep is resumable: a (setting, target, seed) whose child run already
FINISHED with the same config hash (which covers the hyperparameters, target and seed) is not
run again. Jobs are (setting, seed) with the targets still missing; ``--jobs N`` runs N of them
at once in spawned worker processes, each with its share of the CPU threads.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from dgmeta.errors import ConfigError, DgmetaError
from dgmeta.orchestration.stages import TrainFn, child_config_hash, default_train, finished_children
from dgmeta.runs.config import RunConfig, resolve_hparams

# Run options a grid may vary; the rest (experiment, store, targets, seeds, ...) define the sweep itself.
GRID_FIELDS = ("dataset", "base", "meta", "protocol", "backbone", "weights", "steps", "batch_size", "image_size", "split", "shots", "eval_every", "precision")
_DEFAULTS = {f.name: f.default for f in fields(RunConfig)}


@dataclass(frozen=True)
class SweepPoint:
    index: int
    options: dict[str, Any] = field(default_factory=dict)  # run options the grid varies
    hparams: dict[str, Any] = field(default_factory=dict)  # hyperparameter overrides

    def label(self) -> str:
        items = {**self.options, **self.hparams}
        return " ".join(f"{k}={_short(v)}" for k, v in items.items()) or "defaults"


@dataclass
class SweepJob:
    point: SweepPoint
    config: RunConfig  # one seed, only the targets not finished yet


@dataclass
class SweepPlan:
    jobs: list[SweepJob]
    done: int  # (setting, target, seed) runs found finished and skipped
    total: int
    hashes: set[str] = field(default_factory=set)  # config hash of every (setting, target, seed) child of the sweep


@dataclass
class SweepReport:
    completed: list[tuple[SweepJob, list[dict]]] = field(default_factory=list)
    failed: list[tuple[SweepJob, str]] = field(default_factory=list)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    grid: list[tuple[str, list[str]]] = []
    for text in items:
        key, sep, values = text.partition("=")
        key = key.strip()
        raw = [v.strip() for v in values.split(",")]
        if not sep or not key or not values.strip() or any(not v for v in raw):
            raise ConfigError(f"--grid {text!r} is not key=v1,v2,...", "write e.g. --grid lr=0.01,0.001")
        if key in (k for k, _ in grid):
            raise ConfigError(f"--grid {key} given twice", "list all its values in one --grid key=v1,v2")
        if key in ("targets", "seeds", "target", "seed"):
            raise ConfigError(f"--grid {key} is not a hyperparameter", "targets and seeds are always swept: use --target / --seeds")
        grid.append((key, raw))
    return grid


def _parse_option(key: str, raw: str) -> Any:
    default = _DEFAULTS[key]
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
    except ValueError:
        raise ConfigError(f"--grid {key}={raw}: expected an integer", f"give integers, e.g. {key}={default}") from None
    return raw


def grid_points(grid: list[tuple[str, list[str]]]) -> list[SweepPoint]:
    keys = [k for k, _ in grid]
    points = []
    for index, combo in enumerate(itertools.product(*(values for _, values in grid))):
        options = {k: _parse_option(k, v) for k, v in zip(keys, combo) if k in GRID_FIELDS}
        hparams = {k: v for k, v in zip(keys, combo) if k not in GRID_FIELDS}
        points.append(SweepPoint(index, options, hparams))
    return points


def random_points(base: RunConfig, count: int, seed: int) -> list[SweepPoint]:
    from dgmeta.hparams import random_hparams

    if count <= 0:
        raise ConfigError(f"--random {count} must be positive", "give the number of draws, e.g. --random 8")
    points = []
    for index in range(count):
        draw = random_hparams(base.base, base.meta, seed=seed * 100_000 + index)
        draw.update(base.hparams)  # values pinned by the spec or --set win over the draw
        points.append(SweepPoint(index, {}, draw))
    return points


def point_config(base: RunConfig, point: SweepPoint) -> RunConfig:
    config = replace(base, **point.options)
    pinned = {**base.hparams, **point.hparams}
    config.hparams = resolve_hparams(config.base, config.meta, pinned, [])
    return config.validate()


def dataset_domains(config: RunConfig) -> list[str]:
    from dgmeta.data import create_dataset

    return list(create_dataset(config.dataset, config.data_root, config.split, seed=0).domains)


def plan_sweep(
    base: RunConfig,
    points: list[SweepPoint],
    client=None,
    name: str = "sweep",
    domains_fn: Callable[[RunConfig], list[str]] = dataset_domains,
) -> SweepPlan:
    """The jobs still to run; runs already FINISHED with the same config hash are skipped."""
    finished = {run.tags.get("dgmeta.config_hash") for run in finished_children(base, client)}
    jobs, done, total, hashes = [], 0, 0, set()
    for point in points:
        config = point_config(base, point)
        targets = config.targets or domains_fn(config)
        for seed in config.seeds:
            hashes.update(child_config_hash(config, t, seed) for t in targets)
            missing = [t for t in targets if child_config_hash(config, t, seed) not in finished]
            total += len(targets)
            done += len(targets) - len(missing)
            if missing:
                run_name = f"{name}-p{point.index}-s{seed}"
                jobs.append(SweepJob(point, replace(config, targets=missing, seeds=[seed], run_name=run_name)))
    return SweepPlan(jobs, done, total, hashes)


def sweep_results(base: RunConfig, plan: SweepPlan, select: str = "training-domain", client=None):
    """The sweep's finished runs selected DomainBed-style: per (target, seed) the setting the rule prefers."""
    from dgmeta.tracking.compare import compare_runs

    runs = [run for run in finished_children(base, client) if run.tags.get("dgmeta.config_hash") in plan.hashes]
    return compare_runs(runs, ("dataset",), None, select)


def _summary(result) -> list[dict]:
    return [{"target": r.target, "seed": r.seed, "run_id": r.run_id, "test_acc": r.test_acc} for r in result.runs]


def _run_job(train_fn: TrainFn, config_dict: dict) -> tuple[str, Any]:
    """Worker entry point: plain data in and out, so nothing unpicklable crosses processes."""
    try:
        return "ok", _summary(train_fn(RunConfig.from_dict(config_dict)))
    except DgmetaError as exc:
        return "error", exc.one_line()
    except Exception as exc:  # one broken setting must not take the sweep down
        return "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def run_sweep(plan: SweepPlan, train_fn: TrainFn | None = None, jobs: int = 1, echo: Callable[[str], None] = print) -> SweepReport:
    train_fn = train_fn or default_train
    report = SweepReport()
    total = len(plan.jobs)

    def record(position: int, job: SweepJob, status: str, payload: Any) -> None:
        head = f"[{position}/{total}] {job.point.label()} seed {job.config.seeds[0]} → {','.join(job.config.targets or [])}"
        if status == "ok":
            report.completed.append((job, payload))
            accs = ", ".join(f"{r['target']} {100 * r['test_acc']:.1f}%" for r in payload)
            echo(f"{head}: {accs}")
        else:
            report.failed.append((job, payload))
            echo(f"{head}: FAILED: {payload}")

    if jobs <= 1 or total <= 1:
        for position, job in enumerate(plan.jobs, 1):
            status, payload = _run_job(train_fn, job.config.to_dict())
            record(position, job, status, payload)
        return report

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from dgmeta.tracking.mlflow_run import Tracking

    # create the experiment (and a fresh SQLite schema) once, before workers race to do it
    first = plan.jobs[0].config
    Tracking(first.tracking_uri, first.experiment)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    with ProcessPoolExecutor(max_workers=min(jobs, total), mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_run_job, train_fn, job.config.to_dict()): job for job in plan.jobs}
        for position, future in enumerate(as_completed(futures), 1):
            status, payload = future.result()
            record(position, futures[future], status, payload)
    return report
