"""`dgmeta run`: every (target, seed) job of a command, tracked as MLflow child runs of one parent.

Everything a user can get wrong is checked *before* the first MLflow run is created, so a typo
never leaves an empty or failed run behind; a failure later marks the runs FAILED (or KILLED
on SIGINT/SIGTERM) and keeps every metric already logged.

Each job checkpoints as it trains (``dgmeta.training.checkpointing``); ``config.resume`` continues
an earlier command's runs (``dgmeta.runs.resume``): finished jobs are skipped, an interrupted
one continues from its checkpoint in the same child run. A stop signal ends the current step,
writes a checkpoint and marks the runs KILLED (``dgmeta.training.signals``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dgmeta.runs.artifacts import RunResult, device_params, flat_params, run_tags
from dgmeta.runs.config import RunConfig
from dgmeta.runs.job import run_job
from dgmeta.runs.plan import ResolvedPlan, resolve_plan

__all__ = ["ExperimentResult", "RunResult", "ResolvedPlan", "resolve_plan", "run_experiment"]


@dataclass
class ExperimentResult:
    parent_run_id: str
    config: RunConfig
    protocol: str
    runs: list[RunResult] = field(default_factory=list)

    def mean_test_acc(self, target: str | None = None) -> float:
        values = [r.test_acc for r in self.runs if target is None or r.target == target]
        return float(np.mean(values)) if values else float("nan")


def run_experiment(config: RunConfig, plan: ResolvedPlan | None = None) -> ExperimentResult:
    from contextlib import ExitStack

    from dgmeta.runs.resume import find_resume_point, missing_params, reopen
    from dgmeta.tracking.mlflow_run import Tracking, log_dataset_input
    from dgmeta.training.allocator import configure_allocator
    from dgmeta.training.checkpointing import RunFolder, ensure_writable_folder, runs_root
    from dgmeta.training.distributed import setup
    from dgmeta.training.signals import RunInterrupted, StopRequests, stop_signals

    from dgmeta.device import resolve_device

    plan = plan or resolve_plan(config)
    device = resolve_device(config.device)
    if device.type == "cpu":  # its gain was measured on CPU training steps only (dgmeta.training.allocator)
        configure_allocator(config.memory)
    dist = setup(device=device)  # joins torchrun's process group; only rank 0 talks to MLflow
    tracking = dist.tracking(lambda: Tracking(config.tracking_uri, config.experiment))
    config_hash = config.config_hash(protocol=plan.protocol)
    params = flat_params(config, plan.hparams, targets=",".join(plan.targets), seeds=",".join(map(str, config.seeds)), **device_params(device))
    # Checkpoints, --resume and clean stops are single-process features: under DDP a rank that
    # stopped on its own would leave the others waiting in a collective.
    single = not dist.enabled
    root = ensure_writable_folder(runs_root(tracking.uri)) if single else None
    resume = find_resume_point(tracking, config, plan, params) if single and config.resume else None
    name = config.run_name or f"{config.dataset}-{config.base}-{config.meta}-{plan.protocol}"
    folder = None
    with ExitStack() as stack:
        stop = stack.enter_context(stop_signals()) if single else StopRequests()
        if resume is None:
            parent = tracking.start_run(name, run_tags(config, plan, **{"dgmeta.role": "parent", "dgmeta.config_hash": config_hash}))
        if single:
            folder = RunFolder(root, config_hash, resume.parent_run_id if resume else parent.run_id)
            stack.enter_context(folder.lock())  # refuses to resume a run another process is still training
        if resume is not None:
            parent = reopen(tracking, resume.parent)
        result = ExperimentResult(parent.run_id, config, plan.protocol)
        try:
            log_dataset_input(parent, plan.dataset)  # a resumed run already has it: MLflow keeps one
            parent.log_params(missing_params(resume.parent if resume else None, params))
            for target in plan.targets:
                for seed in config.seeds:
                    existing = resume.children.get((target, seed)) if resume else None
                    result.runs.append(run_job(config, plan, tracking, parent, target, seed, stop=stop, folder=folder, existing=existing))
            summary = {f"test_acc.{t}": result.mean_test_acc(t) for t in plan.targets}
            summary["test_acc"] = result.mean_test_acc()
            parent.log_metrics(summary, step=0)
            parent.finish("FINISHED")
        except (KeyboardInterrupt, RunInterrupted) as exc:
            parent.set_tags({"dgmeta.error": "interrupted"})
            parent.finish("KILLED")
            if isinstance(exc, RunInterrupted) and single:
                exc.hint = f"continue with the same command plus --resume {parent.run_id}"
            raise
        except BaseException as exc:
            parent.set_tags({"dgmeta.error": str(exc)[:500]})
            parent.finish("FAILED")
            raise
    if folder is not None:
        folder.remove_if_done()
    return result
