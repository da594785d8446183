"""One (target, seed) job of a run: data, network, learner, stepper, training loop, artifacts."""

from __future__ import annotations

import random

import numpy as np
import torch

from dgmeta.runs.artifacts import RunResult, device_params, finished_result, flat_params, log_artifacts, run_tags
from dgmeta.runs.config import RunConfig
from dgmeta.runs.plan import ResolvedPlan


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def run_job(
    config: RunConfig, plan: ResolvedPlan, tracking, parent, target: str, seed: int,
    stop=None, folder=None, existing=None,
) -> RunResult:
    """Train and evaluate one (target, seed); ``folder`` (a ``RunFolder``) enables checkpoints,
    ``existing`` (the job's child run of a resumed command) continues that run."""
    from dgmeta.learners import LearnerContext, create_learner
    from dgmeta.meta import create_stepper, total_calls
    from dgmeta.models import create_network
    from dgmeta.models.freezing import freeze_early_levels
    from dgmeta.runs.resume import missing_params, reopen
    from dgmeta.training.averaging import create_averager
    from dgmeta.training.data import prepare_job_data
    from dgmeta.training.distributed import current
    from dgmeta.training.signals import RunInterrupted
    from dgmeta.training.trainer import BatchSource, Trainer
    from dgmeta.tracking.mlflow_run import log_dataset_input, training_curves

    if existing is not None and existing.info.status == "FINISHED":
        return finished_result(tracking, existing, target, seed)
    dataset = plan.dataset
    config_hash = config.config_hash(protocol=plan.protocol, target=target, seed=seed)
    tags = run_tags(config, plan, **{
        "dgmeta.role": "child", "dgmeta.target": target, "dgmeta.seed": seed, "dgmeta.config_hash": config_hash,
    })
    child = reopen(tracking, existing) if existing is not None else tracking.start_run(f"{config.base}-{config.meta}-{target}-s{seed}", tags, parent)
    checkpoint = None
    if folder is not None:
        checkpoint = folder.job(target, seed, {"config_hash": config_hash, "backbone": config.backbone, "target": target, "seed": seed})
    try:
        log_dataset_input(child, dataset, target=target)
        from dgmeta.device import configure_device, grad_scaler, resolve_device

        seed_everything(seed, config.deterministic)
        dist = current()
        device = resolve_device(config.device)
        configure_device(device, config.deterministic)
        with dist.main_first():  # rank 0 builds the decoded-image cache, the other ranks then read it
            data = prepare_job_data(dataset, target, plan.protocol, config.image_size, config.cache_dir, config.shots, seed, not config.quiet and dist.is_main, config.cache)
        num_sources = len(data.sources)
        network = create_network(config.backbone, len(dataset.classes), config.weights, float(plan.hparams["dropout"]), config.channels_last)
        freeze_early_levels(network.featurizer.body, int(plan.hparams["freeze_levels"]))
        probe_acc = None
        if plan.hparams["head_init"] == "probe":
            from dgmeta.training.head_init import init_head_from_probe

            probe_acc = init_head_from_probe(network, data.train, config.effective_train_size, float(plan.hparams["probe_C"]))
        context = LearnerContext(
            num_classes=len(dataset.classes),
            num_domains=num_sources + (1 if data.target_shots is not None else 0),
            protocol=plan.protocol,
            total_steps=config.steps,
        )
        learner = create_learner(config.base, network, context, plan.hparams).to(device)  # heads and discriminators too
        stepper = create_stepper(config.meta, learner, plan.hparams, config.steps, num_sources, seed)  # optimizers over the moved parameters
        stepper.scaler = grad_scaler(config.precision, device)
        dist.attach(stepper)  # DDP: same start on every rank, gradients averaged before each optimizer step
        child.log_params(missing_params(existing, flat_params(config, plan.hparams, target=target, seed=seed, protocol=plan.protocol, split_kind=dataset.split_kind, world_size=dist.world_size, **device_params(device))))
        if data.shot_files:
            child.log_text("\n".join(data.shot_files), "ssda_labelled_shots.txt")
        batches = BatchSource(data, config.batch_size, seed, augment=plan.hparams["augment"] != "none", dist=dist, train_size=config.effective_train_size, device=device)
        trainer = Trainer(
            learner, stepper, data, batches, total_calls(stepper), config.eval_every, config.precision,
            on_metrics=training_curves(child), progress=not config.quiet and dist.is_main,
            description=f"{config.base}+{config.meta} → {target} s{seed}",
            evaluate_fn=dist.evaluate if dist.enabled else None,
            checkpoint_every=config.checkpoint_every,
            on_checkpoint=_checkpoint_writer(checkpoint, child, parent) if checkpoint is not None else None,
            stop=stop,
            averager=create_averager(config.average, plan.hparams),
            test_every_eval=config.test_every_eval,
            recompute_bn=not plan.hparams["freeze_bn"],
        )
        if checkpoint is not None:
            child.set_tags({"dgmeta.checkpoint": str(checkpoint.path)})
            if existing is not None:
                _resume_trainer(trainer, checkpoint, config.backbone, child)
        outcome = trainer.fit()
        learner.load_state_dict(outcome.selected_state)
        selected = outcome.history.selected()
        oracle = outcome.history.oracle()
        oracle_acc = oracle.test[target] if oracle is not None else float("nan")
        test_acc = selected.test[target]
        final = {
            "test_acc": test_acc,
            "val_acc": selected.val_mean,
            "selected_step": selected.step,
            "oracle_test_acc": oracle_acc,
            "live_test_acc": (outcome.history.selected_live().test or {}).get(target, float("nan")),
            "perf.images_per_second": outcome.images_per_second,
            "perf.data_wait_fraction": outcome.data_wait_fraction,
            "perf.train_seconds": outcome.seconds,
        }
        child.log_metrics(final, step=config.steps)
        per_domain = dict(selected.val)
        per_domain[target] = test_acc
        model_path = log_artifacts(child, config, plan, learner, data, outcome, target, seed, per_domain) if dist.is_main else None
        child.finish("FINISHED")
        if checkpoint is not None:
            checkpoint.discard()
        return RunResult(
            target, seed, child.run_id, test_acc, selected.step, selected.val_mean, per_domain,
            model_path, oracle_acc, outcome.images_per_second, outcome.data_wait_fraction, final["live_test_acc"],
        )
    except (KeyboardInterrupt, RunInterrupted):
        child.set_tags({"dgmeta.error": "interrupted"})
        child.finish("KILLED")
        raise
    except BaseException as exc:
        child.set_tags({"dgmeta.error": f"{type(exc).__name__}: {exc}"[:500]})
        child.finish("FAILED")
        raise


def _checkpoint_writer(checkpoint, child, parent):
    def write(step: int, state: dict) -> None:
        child.flush()  # the metrics up to this step reach the store before the state that follows them
        checkpoint.save(step, state, parent_run_id=parent.run_id, child_run_id=child.run_id)

    return write


def _resume_trainer(trainer, checkpoint, backbone: str, child) -> None:
    """Load the job's checkpoint into ``trainer``; without one (killed before the first) it starts over."""
    from dgmeta.training.checkpointing import incompatible_checkpoint

    payload = checkpoint.load()
    if payload is None:
        return
    try:
        trainer.load_state_dict(payload["state"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise incompatible_checkpoint(checkpoint.path, backbone, exc) from None
    child.set_tags({"dgmeta.resumed_from_step": trainer.start_step})
