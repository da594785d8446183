"""The learner interface every base DA method implements.

A learner *declares* what to optimise; it never steps an optimizer itself. It lists its
:class:`Stage` s (one for ERM/DANN/JiGen, three for MCD), each with the child modules whose
parameters that stage updates, and computes each stage's :class:`Objective` from a
:class:`Batch`. Because ``forward(batch, stage=...)`` is the single entry point for every
objective, ``torch.func.functional_call(learner, params, (batch,), {"stage": ...})`` evaluates
any objective under substituted parameters: this is what lets the meta wrappers
(``dgmeta.meta``) run inner loops over any learner unchanged, and what lets the trainer
(``dgmeta.training``) decide how to step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from dgmeta.errors import ConfigError
from dgmeta.hparam_spec import HParam

PROTOCOLS = ("dg", "msda", "ssda")


@dataclass
class Batch:
    """One training step's data.

    ``x``/``y``/``domain``: labelled images (float in [0, 1], NCHW), class labels and the
    index of the labelled domain each came from (sources are ``0..S-1``; under ``ssda`` the
    target's labelled shots carry index ``S``). ``target_x``: unlabelled target images
    (``msda``/``ssda``), or ``None`` under ``dg``.
    """

    x: Tensor
    y: Tensor
    domain: Tensor
    target_x: Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.x.to(device, non_blocking=True),
            self.y.to(device, non_blocking=True),
            self.domain.to(device, non_blocking=True),
            None if self.target_x is None else self.target_x.to(device, non_blocking=True),
        )

    def select(self, mask: Tensor) -> "Batch":
        """The labelled samples where ``mask`` holds; ``target_x`` is kept."""
        return replace(self, x=self.x[mask], y=self.y[mask], domain=self.domain[mask])

    def with_target(self, target_x: Tensor | None) -> "Batch":
        return replace(self, target_x=target_x)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Stage:
    """One optimisation stage: which child modules it updates and how often per step."""

    name: str
    modules: tuple[str, ...]
    repeat: int = 1


@dataclass
class Objective:
    """A stage's scalar loss plus its named terms (detached, for logging and NaN reports)."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LearnerContext:
    """Static facts a learner needs about the task."""

    num_classes: int
    num_domains: int  # labelled domains in a batch (sources, + the target under ssda)
    protocol: str = "dg"
    total_steps: int = 1000


class Learner(nn.Module):
    """Base class. Subclasses set ``name``/``protocols`` and implement ``objective``.

    ``featurizer`` maps images to features (``feature_dim`` wide); ``classifier`` maps
    features to class logits. Extra heads (a domain discriminator, a second classifier,
    a jigsaw head) are further child modules named in :meth:`stages`.
    """

    name: ClassVar[str] = "base"
    protocols: ClassVar[tuple[str, ...]] = PROTOCOLS
    #: the protocol a run uses when ``--protocol`` is not given
    default_protocol: ClassVar[str] = "dg"
    #: this learner's own hyperparameters (:class:`~dgmeta.hparam_spec.HParam`), read as ``hparams[key]``
    HPARAMS: ClassVar[dict[str, HParam]] = {}
    #: whether the network's linear head is the learner's classifier (what head_init=probe fits)
    keeps_linear_head: ClassVar[bool] = True

    def __init__(self, network: nn.Module, context: LearnerContext, hparams: dict):
        super().__init__()
        if context.protocol not in self.protocols:
            works = ", ".join(self.protocols)
            raise ConfigError(
                f"--base {self.name} cannot run under --protocol {context.protocol}",
                f"use --protocol {works.split(', ')[0]} (supported: {works})",
            )
        self.featurizer = network.featurizer
        self.classifier = network.classifier
        self.feature_dim: int = network.feature_dim
        self.context = context
        self.hparams = dict(hparams)

    # -- what to optimise -------------------------------------------------------------
    def stages(self) -> list[Stage]:
        return [Stage("main", tuple(name for name, _ in self.named_children()))]

    def objective(self, stage: str, batch: Batch, progress: float) -> Objective:
        raise NotImplementedError

    # -- inference ---------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        return self.featurizer(x)

    def predict(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.classifier(self.featurizer(x))

    def report(self, classes: list[str]) -> dict:
        """What the trained learner estimated that a user wants beside its accuracy, JSON-ready
        (``results.json`` key ``learner``); most learners estimate nothing more."""
        return {}

    def export_classifier(self) -> nn.Module:
        """The head to save with the featurizer: must give the same predictions as ``predict``
        (MCD folds its two classifiers into one)."""
        return self.classifier

    def forward(self, inputs, stage: str | None = None, progress: float = 0.0):
        """``forward(x)`` -> logits; ``forward(batch, stage=name, progress=p)`` -> Objective."""
        if stage is None:
            return self.predict(inputs)
        return self.objective(stage, inputs, progress)

    # -- helpers ---------------------------------------------------------------------
    def stage_parameters(self, stage: Stage) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for module_name in stage.modules:
            params.extend(p for p in getattr(self, module_name).parameters() if p.requires_grad)
        return params

    def stage_parameter_names(self, stage: Stage) -> list[str]:
        return [
            n
            for n, p in self.named_parameters()
            if p.requires_grad and n.split(".", 1)[0] in stage.modules
        ]

    def target_images(self, batch: Batch) -> Tensor:
        """``batch.target_x``, or a one-line error when a DA protocol's batch has none."""
        if batch.target_x is None or batch.target_x.shape[0] == 0:
            raise ConfigError(
                f"--base {self.name} under --protocol {self.context.protocol} needs unlabelled target images, but the batch has none",
                "build batches with target_x (the trainer does this for msda/ssda) or use --protocol dg",
            )
        return batch.target_x

    def head_module_names(self) -> tuple[str, ...]:
        """Modules trained from scratch (get the larger head learning rate)."""
        return tuple(n for n, _ in self.named_children() if n != "featurizer")
