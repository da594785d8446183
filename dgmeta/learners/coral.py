"""CORAL: Deep CORAL (Sun & Saenko, ECCV-W 2016) as DomainBed runs it (PACS ResNet-50: 86.2).

The classifier's cross-entropy on the labelled images plus ``mmd_gamma`` times the mean, over
every pair of domains in the batch, of :func:`~dgmeta.losses.coral.coral_loss` between their
features: the featurizer learns features whose mean and covariance do not tell domains apart.
One stage, one featurizer pass over every image (batch norm sees all domains, as in DANN).

Which domains are aligned depends on the protocol: under ``dg`` the labelled source domains;
under ``msda`` the sources and the unlabelled target images; under ``ssda`` the sources and the
target, whose labelled shots join its unlabelled images. A domain with fewer than two images in
a batch (a meta-train split, a small share of a batch) has no covariance and sits out that step.

:class:`DomainAlignment` is the frame for any such distance (``dgmeta.learners.mmd`` uses it with
a kernel MMD); a subclass gives :meth:`DomainAlignment.distance`.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from dgmeta.errors import ConfigError
from dgmeta.hparam_spec import HParam, at_least
from dgmeta.learners.base import Batch, Learner, LearnerContext, Objective
from dgmeta.learners.registry import LEARNERS
from dgmeta.losses.coral import coral_loss

#: DomainBed's weight of the alignment penalty, shared by the learners built on DomainAlignment
ALIGNMENT_WEIGHT = HParam(
    1.0, lambda r: float(10 ** r.uniform(-1, 1)), "weight of the feature-alignment penalty (DomainBed's mmd_gamma)", at_least(0)
)


class DomainAlignment(Learner):
    """Cross-entropy plus ``mmd_gamma`` x the mean :meth:`distance` over pairs of domain features."""

    protocols = ("dg", "msda", "ssda")
    default_protocol = "dg"
    HPARAMS = {"mmd_gamma": ALIGNMENT_WEIGHT}

    def __init__(self, network, context: LearnerContext, hparams: dict):
        super().__init__(network, context, hparams)
        if context.protocol == "dg" and context.num_domains < 2:
            raise ConfigError(
                f"--base {self.name} under --protocol dg needs at least two source domains to align",
                "use a dataset with two or more source domains, or --protocol msda",
            )

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def domain_groups(self, batch: Batch) -> tuple[Tensor, list[Tensor]]:
        """All images for the one featurizer pass (labelled first), and each domain's row indices."""
        target_x = None if self.context.protocol == "dg" else self.target_images(batch)
        x = batch.x if target_x is None else torch.cat([batch.x, target_x])
        labelled = torch.arange(len(batch), device=batch.x.device)
        target_index = self.context.num_domains - 1 if self.context.protocol == "ssda" else None
        groups = [labelled[batch.domain == d] for d in batch.domain.unique().tolist() if d != target_index]
        if target_x is not None:
            shots = labelled[batch.domain == target_index] if target_index is not None else labelled[:0]
            groups.append(torch.cat([shots, torch.arange(len(batch), len(x), device=x.device)]))
        return x, [g for g in groups if len(g) >= 2]

    def alignment_penalty(self, features: Tensor, groups: list[Tensor]) -> Tensor:
        pairs = list(itertools.combinations(groups, 2))
        if not pairs:  # one domain in this batch: nothing to align
            return features.sum() * 0.0
        return torch.stack([self.distance(features[a], features[b]) for a, b in pairs]).mean()

    def objective(self, stage: str, batch: Batch, progress: float) -> Objective:
        x, groups = self.domain_groups(batch)
        features = self.featurizer(x)
        cls = F.cross_entropy(self.classifier(features[: len(batch)]), batch.y)
        penalty = self.alignment_penalty(features, groups)
        return Objective(cls + float(self.hparams["mmd_gamma"]) * penalty, {"cls": cls.detach(), "align": penalty.detach()})


@LEARNERS.register("coral")
class CORAL(DomainAlignment):
    name = "coral"

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        return coral_loss(x, y)
