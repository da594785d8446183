"""DANN: domain-adversarial neural networks (Ganin et al., JMLR 2016).

A domain discriminator sits behind a gradient reversal layer on the features, so one stage
over all children (one backward) trains the discriminator to tell domains apart and the
featurizer to make them indistinguishable. What the discriminator separates depends on the
protocol:

* ``msda`` / ``ssda``: **source vs target**, 2 classes. Class 0 = every labelled source image;
  class 1 = the unlabelled target images plus (``ssda``) the labelled target shots, i.e. the
  labelled images whose domain index is ``num_domains - 1``. This is DANN as published.
* ``dg``: no target data, so it classifies **the source domains** (``num_domains`` classes),
  making features domain-invariant across sources (DomainBed's DANN).

The GRL coefficient follows ``lambda_max * dann_lambda(progress, lambda_gamma)``; the
discriminator itself always learns at full strength. Logged terms: ``cls``, ``adv``
(discriminator cross-entropy), ``disc_acc`` (domain-balanced, chance = 1 / #domains) and
``lambda``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dgmeta.errors import ConfigError
from dgmeta.hparam_spec import HParam, at_least, fraction, positive
from dgmeta.learners.base import Batch, Learner, LearnerContext, Objective
from dgmeta.learners.registry import LEARNERS
from dgmeta.losses import DomainAdversarialLoss, DomainDiscriminator, dann_lambda


@LEARNERS.register("dann")
class DANN(Learner):
    name = "dann"
    protocols = ("dg", "msda", "ssda")
    default_protocol = "msda"
    HPARAMS = {
        "lambda_max": HParam(1.0, lambda r: float(10 ** r.uniform(-1, 0.5)), "final weight of the adversarial loss", at_least(0)),
        "lambda_gamma": HParam(10.0, lambda r: 10.0, "gamma in lambda(p) = 2/(1+exp(-gamma p)) - 1", positive()),
        "disc_hidden": HParam(256, lambda r: int(2 ** r.randint(6, 10)), "domain discriminator width", positive(integer=True)),
        "disc_layers": HParam(2, lambda r: int(r.choice([1, 2, 3])), "hidden layers of the discriminator", positive(integer=True)),
        "disc_dropout": HParam(0.5, lambda r: float(r.choice([0.0, 0.5])), "discriminator dropout", fraction()),
    }

    def __init__(self, network, context: LearnerContext, hparams: dict):
        super().__init__(network, context, hparams)
        self.source_vs_target = context.protocol in ("msda", "ssda")
        if not self.source_vs_target and context.num_domains < 2:
            raise ConfigError(
                "--base dann under --protocol dg needs at least two source domains to align",
                "use a dataset with two or more source domains, or --protocol msda",
            )
        discriminator = DomainDiscriminator(
            self.feature_dim,
            2 if self.source_vs_target else context.num_domains,
            hidden=int(self.hparams["disc_hidden"]),
            layers=int(self.hparams["disc_layers"]),
            dropout=float(self.hparams["disc_dropout"]),
        )
        self.adversary = DomainAdversarialLoss(discriminator)

    def adversarial_coefficient(self, progress: float) -> float:
        lambda_max = float(self.hparams["lambda_max"])
        return lambda_max * dann_lambda(progress, float(self.hparams["lambda_gamma"]))

    def discriminator_inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """All images for the one featurizer pass (labelled first), and each one's
        discriminator label: the source domain (``dg``) or 0 = source / 1 = target."""
        if not self.source_vs_target:
            return batch.x, batch.domain
        target_x = self.target_images(batch)
        labelled_is_target = batch.domain == self.context.num_domains - 1
        if self.context.protocol != "ssda":  # under msda every labelled image is a source image
            labelled_is_target = torch.zeros_like(labelled_is_target)
        target_side = torch.ones(len(target_x), dtype=torch.long, device=target_x.device)
        return torch.cat([batch.x, target_x]), torch.cat([labelled_is_target.long(), target_side])

    def alignment_weights(self, batch: Batch, features: Tensor, logits: Tensor) -> AlignmentWeights:
        """Per-sample weights of the classification and the adversarial loss: uniform for DANN
        (IWDAN overrides this with its class ratios)."""
        return AlignmentWeights()

    def objective(self, stage: str, batch: Batch, progress: float) -> Objective:
        x, domains = self.discriminator_inputs(batch)
        # One pass over labelled + target images: batch-norm sees both domains, as in DANN.
        features = self.featurizer(x)
        logits = self.classifier(features[: len(batch)])
        weights = self.alignment_weights(batch, features, logits)
        cls = weighted_cross_entropy(logits, batch.y, weights.classification)
        coeff = self.adversarial_coefficient(progress)
        adv, disc_acc = self.adversary(features, domains, coeff, weights.discriminator)
        terms = {"cls": cls.detach(), "adv": adv.detach(), "disc_acc": disc_acc, "lambda": torch.tensor(coeff)}
        return Objective(cls + adv, {**terms, **weights.terms})


class AlignmentWeights(NamedTuple):
    """``classification``: ``[len(batch)]`` weights of the labelled images' cross-entropy;
    ``discriminator``: ``[N]`` within-domain weights of every image the discriminator sees
    (:class:`~dgmeta.losses.DomainAdversarialLoss`); ``None`` = uniform. ``terms`` are logged."""

    classification: Tensor | None = None
    discriminator: Tensor | None = None
    terms: dict = {}


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor | None) -> Tensor:
    """The weighted mean ``sum_i c_i CE_i / sum_i c_i`` (the plain mean when ``weights`` is None),
    so reweighting changes which images count, not the loss scale the step sizes were tuned for."""
    if weights is None:
        return F.cross_entropy(logits, labels)
    weights = weights.detach().to(logits.dtype)
    return (weights * F.cross_entropy(logits, labels, reduction="none")).sum() / weights.sum().clamp_min(1e-12)
