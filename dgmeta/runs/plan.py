"""Planning a run: every name, option and size a user can get wrong is checked here, before the
first MLflow run exists, and the run's protocol and full hyperparameters are resolved."""

from __future__ import annotations

from dataclasses import dataclass

from dgmeta.errors import ConfigError
from dgmeta.runs.config import RunConfig

#: defaults that only make sense for pretrained weights, replaced under --weights none unless --set
FROM_SCRATCH = {"freeze_levels": 0, "freeze_bn": False}


@dataclass
class ResolvedPlan:
    dataset: object
    targets: list[str]
    protocol: str
    hparams: dict


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
