"""`dgmeta run`: every (target, seed) job of a command, tracked as MLflow child runs of one parent.

Everything a user can get wrong is checked *before* the first MLflow run is created, so a typo
never leaves an empty or failed run behind; a failure later marks the runs FAILED (or KILLED
on SIGINT/SIGTERM) and keeps every metric already logged.

Each job checkpoints as it trains (``dgmeta.training.checkpointing``); ``config.resume`` continues
an earlier command's runs (``dgmeta.training.resume``): finished jobs are skipped, an interrupted
one continues from its checkpoint in the same child run. A stop signal ends the current step,
writes a checkpoint and marks the runs KILLED (``dgmeta.training.signals``).
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dgmeta.config import RunConfig
from dgmeta.errors import ConfigError
from dgmeta.evaluation.selection import SELECTION_RULE

#: defaults that only make sense for pretrained weights, replaced under --weights none unless --set
FROM_SCRATCH = {"freeze_levels": 0, "freeze_bn": False}


@dataclass
class RunResult:
    target: str
    seed: int
    run_id: str
    test_acc: float
    selected_step: int
    val_acc: float
    per_domain: dict[str, float]
    model_path: Path | None = None
    oracle_test_acc: float = float("nan")
    images_per_second: float = 0.0
    data_wait_fraction: float = 0.0
    #: target accuracy of the best live checkpoint by source validation (differs from test_acc
    #: when a weight average is the reported model)
    live_test_acc: float = float("nan")


@dataclass
class ExperimentResult:
    parent_run_id: str
    config: RunConfig
    protocol: str
    runs: list[RunResult] = field(default_factory=list)

    def mean_test_acc(self, target: str | None = None) -> float:
        values = [r.test_acc for r in self.runs if target is None or r.target == target]
        return float(np.mean(values)) if values else float("nan")


@dataclass
class ResolvedPlan:
    dataset: object
    targets: list[str]
    protocol: str
    hparams: dict


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_plan(config: RunConfig) -> ResolvedPlan:
    """Validate names, data and options up front; raises a one-line DgmetaError on a mistake."""
    import timm

    from dgmeta.data import create_dataset
    from dgmeta.hparams import apply_overrides, default_hparams
    from dgmeta.learners.registry import learner_class

    config.validate()
    learner_cls = learner_class(config.base)
    hparams = apply_overrides(default_hparams(config.base, config.meta), config.hparams)
    if config.weights == "none":  # a random network has no early filters or batch-norm statistics worth keeping
        hparams.update({k: v for k, v in FROM_SCRATCH.items() if k not in config.hparams})
    if hparams["head_init"] == "probe" and not learner_cls.keeps_linear_head:
        raise ConfigError(
            f"--set head_init=probe fits a linear head, but --base {config.base} replaces the head with its own classifier",
            "drop --set head_init=probe for this learner",
        )
    protocol = config.protocol or learner_cls.default_protocol
    if protocol not in learner_cls.protocols:
        raise ConfigError(
            f"--base {config.base} cannot run under --protocol {protocol}",
            f"use --protocol {' or '.join(learner_cls.protocols)}",
        )
    if not timm.is_model(config.backbone):
        raise ConfigError(
            f"unknown backbone {config.backbone!r}",
            "give any timm model name (timm.list_models()), e.g. tf_efficientnet_lite0 or resnet18",
        )
    dataset = create_dataset(config.dataset, config.data_root, config.split, seed=0)
    targets = config.targets or list(dataset.domains)
    for target in targets:
        dataset.check_domain(target)
    if len(dataset.domains) < 2:
        raise ConfigError(f"dataset {config.dataset} has one domain", "domain generalization needs at least two")
    if config.meta not in ("none", "") and len(dataset.domains) - 1 < 2:
        raise ConfigError(
            f"--meta {config.meta} needs at least two source domains (meta-train and meta-test)",
            "use a dataset with three or more domains, or --meta none",
        )
    _check_run_options(config, dataset, targets, protocol)
    if int(hparams["freeze_levels"]) > 0:  # the bound depends on the backbone: check it on a weightless copy
        import torch

        from dgmeta.models.freezing import frozen_prefix

        with torch.device("meta"):
            frozen_prefix(timm.create_model(config.backbone, pretrained=False, num_classes=0), int(hparams["freeze_levels"]))
    _check_split_sizes(config, dataset, targets, protocol)
    return ResolvedPlan(dataset, targets, protocol, hparams)


def _check_run_options(config: RunConfig, dataset, targets: list[str], protocol: str) -> None:
    """Mistakes that would otherwise surface only inside a job, after its MLflow run exists."""
    from dgmeta.training.data import choose_shots

    if not isinstance(config.checkpoint_every, int) or config.checkpoint_every < 0:
        raise ConfigError(
            f"--checkpoint-every must be 0 (at every evaluation) or a positive number of steps, got {config.checkpoint_every}",
            "pass e.g. --checkpoint-every 50",
        )
    if config.resume is not None and not str(config.resume).strip():
        raise ConfigError("--resume needs a run id", "pass the parent or child run id printed by `dgmeta run`, or --resume auto")
    if config.resume and config.nproc > 1:
        raise ConfigError("--resume is not supported with --nproc > 1", "resume on a single process, or start a new run")
    if protocol == "ssda":  # only class sizes matter here; the job draws its own seeded shots
        for target in targets:
            choose_shots(dataset.samples(target, "train"), config.shots, 0, len(dataset.classes))
    if config.weights not in ("imagenet", "none"):  # a local file: cheap to check it fits the backbone now
        from dgmeta.models import create_network

        create_network(config.backbone, len(dataset.classes), config.weights, 0.0, False)


def make_stepper(meta: str, learner, hparams: dict, steps: int, num_sources: int, seed: int):
    from dgmeta.training.stepper import StageStepper

    if meta in ("none", ""):
        return StageStepper(learner, hparams, steps)
    from dgmeta.meta import create_stepper

    return create_stepper(meta, learner, hparams, steps, num_sources, seed)


def run_tags(config: RunConfig, plan: ResolvedPlan, **extra) -> dict[str, str]:
    from dgmeta.tracking.mlflow_run import git_commit

    tags = {
        "dgmeta.dataset": config.dataset,
        "dgmeta.base": config.base,
        "dgmeta.meta": config.meta,
        "dgmeta.protocol": plan.protocol,
        "dgmeta.split": plan.dataset.split_kind,
        "dgmeta.selection": SELECTION_RULE,
        "dgmeta.backbone": config.backbone,
        "dgmeta.weights": config.weights,
        "dgmeta.git_commit": git_commit(),
        "dgmeta.data_fingerprint": plan.dataset.fingerprint(),
    }
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


def flat_params(config: RunConfig, hparams: dict, **extra) -> dict[str, object]:
    params = {k: v for k, v in config.to_dict().items() if k not in ("hparams", "targets", "seeds", "fewshot")}
    params.update({f"hp.{k}": v for k, v in hparams.items()})
    params.update(extra)
    return params


def device_params(device: torch.device) -> dict[str, str]:
    """The device a run computed on, for MLflow next to the ``device`` it was asked for."""
    from dgmeta.device import device_label

    return {"device.resolved": device_label(device)}


def _check_split_sizes(config: RunConfig, dataset, targets: list[str], protocol: str) -> None:
    """Splits too small for a stage (an empty validation split makes val_acc NaN and model
    selection arbitrary; ssda shots that take every target image leave nothing to adapt to or
    test on), and sizes that can only end in an out-of-memory kill on this machine."""
    from dgmeta.resources import check_step_memory

    for target in targets:
        for source in (d for d in dataset.domains if d != target):
            train, val = len(dataset.samples(source, "train")), len(dataset.samples(source, "val"))
            if train == 0 or val == 0:
                raise ConfigError(
                    f"source domain {source} has {train} train and {val} validation images (target {target})",
                    "training and model selection need both: give every class of each source domain at least 2 images "
                    "(a random split holds out 20% of each class), or drop that domain from the data",
                )
        if protocol == "ssda":
            shots = config.shots * len(dataset.classes)
            train, test = len(dataset.samples(target, "train")), len(dataset.samples(target, "test"))
            if train <= shots or test <= shots:
                raise ConfigError(
                    f"--shots {config.shots} takes {shots} labelled images of target {target}, which leaves "
                    f"{max(train - shots, 0)} unlabelled train and at most {max(test - shots, 0)} test images",
                    f"use --shots {max(1, config.shots - 1)} or fewer, or a target with more images",
                )
    images = config.batch_size * (len(dataset.domains) - 1 + (protocol != "dg"))  # sources + the target batch
    check_step_memory(config.image_size, config.batch_size, images)


def run_experiment(config: RunConfig, plan: ResolvedPlan | None = None) -> ExperimentResult:
    from contextlib import ExitStack

    from dgmeta.tracking.mlflow_run import Tracking
    from dgmeta.training.allocator import configure_allocator
    from dgmeta.training.checkpointing import RunFolder, ensure_writable_folder, runs_root
    from dgmeta.training.distributed import setup
    from dgmeta.training.resume import find_resume_point, missing_params, reopen
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


def run_job(
    config: RunConfig, plan: ResolvedPlan, tracking, parent, target: str, seed: int,
    stop=None, folder=None, existing=None,
) -> RunResult:
    """Train and evaluate one (target, seed); ``folder`` (a ``RunFolder``) enables checkpoints,
    ``existing`` (the job's child run of a resumed command) continues that run."""
    from dgmeta.learners import LearnerContext, create_learner
    from dgmeta.models import create_network
    from dgmeta.training.data import prepare_job_data
    from dgmeta.training.distributed import current
    from dgmeta.training.resume import missing_params, reopen
    from dgmeta.training.signals import RunInterrupted
    from dgmeta.meta import total_calls
    from dgmeta.models.freezing import freeze_early_levels
    from dgmeta.training.averaging import create_averager
    from dgmeta.training.trainer import BatchSource, Trainer

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
        stepper = make_stepper(config.meta, learner, plan.hparams, config.steps, num_sources, seed)  # optimizers over the moved parameters
        stepper.scaler = grad_scaler(config.precision, device)
        dist.attach(stepper)  # DDP: same start on every rank, gradients averaged before each optimizer step
        child.log_params(missing_params(existing, flat_params(config, plan.hparams, target=target, seed=seed, protocol=plan.protocol, split_kind=dataset.split_kind, world_size=dist.world_size, **device_params(device))))
        if data.shot_files:
            child.log_text("\n".join(data.shot_files), "ssda_labelled_shots.txt")
        batches = BatchSource(data, config.batch_size, seed, augment=plan.hparams["augment"] != "none", dist=dist, train_size=config.effective_train_size, device=device)
        trainer = Trainer(
            learner, stepper, data, batches, total_calls(stepper), config.eval_every, config.precision,
            on_metrics=child.log_metrics, progress=not config.quiet and dist.is_main,
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
        model_path = _log_artifacts(child, config, plan, learner, data, outcome, target, seed, per_domain) if dist.is_main else None
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


def finished_result(tracking, run, target: str, seed: int) -> RunResult:
    """The result of a job that finished before its command was resumed, read back from its artifacts."""
    run_id = run.info.run_id
    out = tempfile.mkdtemp(prefix="dgmeta-resume-")
    results = json.loads(Path(tracking.client.download_artifacts(run_id, "results.json", out)).read_text())
    model_path = Path(tracking.client.download_artifacts(run_id, "model/network.pt", out))
    weights = results.get("weights", "live")
    selected = next(c for c in results["checkpoints"] if c["step"] == results["selected_step"] and c.get("weights", "live") == weights)
    return RunResult(
        target, seed, run_id, results["test_acc"], results["selected_step"], selected["val_mean"], results["per_domain"],
        model_path, float("nan") if results["oracle_test_acc"] is None else results["oracle_test_acc"], results["images_per_second"], results["data_wait_fraction"],
    )


def _log_artifacts(child, config, plan, learner, data, outcome, target, seed, per_domain) -> Path:
    from dgmeta.models.checkpoint import save_network
    from dgmeta.models.network import DomainNetwork

    out = Path(tempfile.mkdtemp(prefix="dgmeta-run-"))
    child.log_text(json.dumps({**config.to_dict(), "protocol": plan.protocol, "target": target, "seed": seed, "hparams_resolved": plan.hparams}, indent=2, default=str), "config.json")
    results = {
        "target": target,
        "seed": seed,
        "protocol": plan.protocol,
        "split": plan.dataset.split_kind,
        "selection": SELECTION_RULE,
        "test_acc": per_domain[target],
        "selected_step": outcome.history.selected().step,
        "per_domain": per_domain,
        "checkpoints": outcome.history.to_dict(),
        "oracle_test_acc_label": "oracle (selected on the target; never reported as test_acc)",
        "oracle_test_acc": outcome.history.oracle().test[target] if outcome.history.oracle() is not None else None,
        "weights": outcome.history.selected().weights,
        "images_per_second": outcome.images_per_second,
        "data_wait_fraction": outcome.data_wait_fraction,
    }
    child.log_text(json.dumps(results, indent=2), "results.json")
    network = DomainNetwork.__new__(DomainNetwork)
    torch.nn.Module.__init__(network)
    network.featurizer = learner.featurizer
    network.classifier = learner.export_classifier()
    network.feature_dim = learner.feature_dim
    meta = {
        "backbone": config.backbone,
        "num_classes": len(plan.dataset.classes),
        "classes": list(plan.dataset.classes),
        "image_size": config.image_size,
        "dataset": config.dataset,
        "domains": list(plan.dataset.domains),
        "train_domains": list(data.sources),
        "target": target,
        "seed": seed,
        "base": config.base,
        "meta_mode": config.meta,
        "protocol": plan.protocol,
        "dropout": float(plan.hparams["dropout"]),
        "hparams": dict(plan.hparams),
    }
    model_path = save_network(out / "network.pt", network, meta)
    child.log_artifact(model_path, "model")
    _log_plots(child, out, learner, data, outcome, target, per_domain, config, plan)
    return model_path


def _log_plots(child, out: Path, learner, data, outcome, target, per_domain, config, plan) -> None:
    try:
        from dgmeta.tracking import plots
    except ImportError:
        return
    from dgmeta.evaluation.accuracy import predict_array

    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    paths = [
        plots.plot_domain_accuracy(per_domain, target, plot_dir / "domain_accuracy.png"),
        plots.plot_training_curves(outcome.losses, plot_dir / "training_curves.png"),
    ]
    pred, _ = predict_array(learner, data.test.images, precision=config.precision)
    paths.append(plots.plot_confusion(data.test.labels, pred, list(plan.dataset.classes), plot_dir / "confusion_target.png"))
    # t-SNE on a bounded, seeded subset per domain: features coloured by domain and by class.
    rng = np.random.default_rng(0)
    feats, doms, labs = [], [], []
    domain_arrays = list(zip(data.sources, data.val)) + [(target, data.test)]
    for index, (_, arrays) in enumerate(domain_arrays):
        take = rng.permutation(len(arrays.labels))[:150]
        _, f = predict_array(learner, arrays.images[np.sort(take)], precision=config.precision, return_features=learner.featurizer)
        feats.append(f)
        doms.append(np.full(len(take), index))
        labs.append(arrays.labels[np.sort(take)])
    if sum(len(d) for d in doms) >= 10:
        paths.append(plots.plot_tsne(np.concatenate(feats), np.concatenate(doms), np.concatenate(labs), [d for d, _ in domain_arrays], list(plan.dataset.classes), plot_dir / "tsne.png", seed=0))
    for path in paths:
        if path is not None:
            child.log_artifact(path, "plots")
