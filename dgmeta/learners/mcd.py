"""MCD: maximum classifier discrepancy (Saito et al., CVPR 2018).

The featurizer is the generator G; the network's ``classifier`` is F1 and ``classifier2`` a
freshly initialised copy of it (same shape, its own random init, so the two disagree from the
start). Each iteration runs three stages, each with its own optimizer:

* ``A`` (all): cross-entropy of both classifiers on the labelled images.
* ``B`` (F1, F2): cross-entropy on labelled images *minus* the discrepancy on target images,
  so the classifiers find target samples outside the source support. The features are
  computed without a graph: G is not updated here and its backward would be wasted work.
  Labelled and target images go through G separately (batch-norm statistics per domain).
* ``C`` (G, ``repeat=num_k``): the discrepancy on target images, so G moves target features
  inside the source support where the classifiers agree.

``predict`` sums both classifiers' logits. As both are linear, that sum is itself a linear
head, which :meth:`MCD.export_classifier` returns for the saved network.
MCD needs unlabelled target images, so it runs under ``msda`` and ``ssda`` only.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmeta.errors import ConfigError
from dgmeta.hparam_spec import HParam, positive
from dgmeta.learners.base import Batch, Learner, LearnerContext, Objective, Stage
from dgmeta.learners.registry import LEARNERS
from dgmeta.losses import classifier_discrepancy


@LEARNERS.register("mcd")
class MCD(Learner):
    name = "mcd"
    protocols = ("msda", "ssda")
    default_protocol = "msda"
    HPARAMS = {
        "num_k": HParam(4, lambda r: int(r.choice([1, 2, 4])), "generator steps (C) per iteration", positive(integer=True)),
    }

    def __init__(self, network, context: LearnerContext, hparams: dict):
        super().__init__(network, context, hparams)
        self.num_k = int(self.hparams["num_k"])
        if self.num_k < 1:
            raise ConfigError(f"--set num_k={self.num_k} must be at least 1", "use e.g. --set num_k=4")
        self.classifier2 = _fresh_copy(self.classifier)

    def stages(self) -> list[Stage]:
        return [
            Stage("A", ("featurizer", "classifier", "classifier2")),
            Stage("B", ("classifier", "classifier2")),
            Stage("C", ("featurizer",), repeat=self.num_k),
        ]

    def predict(self, x: Tensor) -> Tensor:
        features = self.featurizer(x)
        return self.classifier(features) + self.classifier2(features)

    def export_classifier(self) -> nn.Module:
        """One linear head whose logits equal ``predict``'s (``W1 + W2``, ``b1 + b2``)."""
        merged = copy.deepcopy(self.classifier)
        with torch.no_grad():
            for p_merged, p2 in zip(merged.parameters(), self.classifier2.parameters()):
                p_merged.add_(p2)
        return merged

    def objective(self, stage: str, batch: Batch, progress: float) -> Objective:
        if stage == "A":
            features = self.featurizer(batch.x)
            cls1, cls2 = self._labelled_losses(features, batch.y)
            return Objective(cls1 + cls2, {"cls1": cls1.detach(), "cls2": cls2.detach()})
        target_x = self.target_images(batch)
        if stage == "B":
            with torch.no_grad():  # target alone, so its batch statistics match stage C's
                labelled_features = self.featurizer(batch.x)
                target_features = self.featurizer(target_x)
            cls1, cls2 = self._labelled_losses(labelled_features, batch.y)
            discrepancy = self.discrepancy(target_features)
            cls = cls1 + cls2
            return Objective(cls - discrepancy, {"cls": cls.detach(), "discrepancy": discrepancy.detach()})
        if stage == "C":
            discrepancy = self.discrepancy(self.featurizer(target_x))
            return Objective(discrepancy, {"discrepancy": discrepancy.detach()})
        raise ValueError(f"MCD has stages A, B, C, not {stage!r}")

    def discrepancy(self, features: Tensor) -> Tensor:
        return classifier_discrepancy(self.classifier(features), self.classifier2(features))

    def _labelled_losses(self, features: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return F.cross_entropy(self.classifier(features), y), F.cross_entropy(self.classifier2(features), y)


def _fresh_copy(head: nn.Module) -> nn.Module:
    """Same architecture as ``head`` (dropout included), newly initialised weights."""
    twin = copy.deepcopy(head)
    for module in twin.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    return twin
