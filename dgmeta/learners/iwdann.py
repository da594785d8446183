"""IWDAN: importance-weighted DANN for label shift (Combes et al., NeurIPS 2020, "Domain adaptation
with conditional distribution matching and generalized label shift").

DANN aligns the *marginal* feature distributions of sources and target. When the classes are not
equally common in both (PACS: ``person`` is 21% of the sources' training images, 4% of sketch's
test list), a perfect alignment must map target images of rare classes onto source features of
common ones, and DANN's predictions follow the sources' class mix (README, "Why DANN loses on
sketch"). IWDAN instead aligns the target with the source *reweighted to the target's class mix*:
each labelled source image counts ``w_y = p_T(y) / p_S(y)`` in the domain discriminator's loss, and
in the classification loss (the weighted source risk that bounds the target risk under generalized
label shift). ``w`` is estimated during training from the model's own predictions
(:class:`~dgmeta.losses.ClassRatioEstimator`: the confusion-matrix QP, updated every
``iw_update_every`` steps with a moving average); it starts at 1, so the first steps are DANN's.

Differences from the official code, each deliberate: the classification loss is the weighted
*mean* (the official code also divides by the source class frequencies and by K, which changes the
loss scale the recipe's step sizes were tuned for); the weights update every ``iw_update_every``
steps rather than every 15 passes over the source data (a 600-step PACS run makes 4-5 passes in all).
Protocols: ``msda`` and ``ssda`` (a target to estimate the class mix of); labelled target shots
under ``ssda`` are target-side images and keep weight 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dgmeta.hparam_spec import FLAG, HParam, fraction, positive
from dgmeta.learners.base import Batch, LearnerContext
from dgmeta.learners.dann import DANN, AlignmentWeights
from dgmeta.learners.registry import LEARNERS
from dgmeta.losses import ClassRatioEstimator


@LEARNERS.register("iwdann")
class IWDANN(DANN):
    name = "iwdann"
    protocols = ("msda", "ssda")
    default_protocol = "msda"
    HPARAMS = {
        **DANN.HPARAMS,
        "iw_update_every": HParam(100, lambda r: int(r.choice([50, 100, 200])), "steps between class-ratio updates", positive(integer=True)),
        "iw_moving_average": HParam(0.5, lambda r: float(r.choice([0.0, 0.5, 0.9])), "share of the old class ratios kept at each update", fraction()),
        "iw_classification": HParam(True, lambda r: bool(r.choice([True, False])), "weight the classification loss by the class ratios too", FLAG),
    }

    def __init__(self, network, context: LearnerContext, hparams: dict):
        super().__init__(network, context, hparams)
        reference = next(self.featurizer.parameters())
        self.class_ratios = ClassRatioEstimator(context.num_classes, float(self.hparams["iw_moving_average"])).to(reference.device)

    def alignment_weights(self, batch: Batch, features: Tensor, logits: Tensor) -> AlignmentWeights:
        is_source = batch.domain < self.context.num_domains - (self.context.protocol == "ssda")
        if self.training:
            target_logits = self.classifier(features[len(batch) :].detach())
            self.class_ratios.observe(logits[is_source], batch.y[is_source], target_logits)
            if int(self.class_ratios.steps) % int(self.hparams["iw_update_every"]) == 0:
                self.class_ratios.update()
        ratios = self.class_ratios.sample_weights(batch.y)
        labelled = torch.where(is_source, ratios, torch.ones_like(ratios)).to(features.dtype)
        target_side = torch.ones(len(features) - len(batch), dtype=labelled.dtype, device=labelled.device)
        weights = self.class_ratios.weights
        return AlignmentWeights(
            classification=labelled if self.hparams["iw_classification"] else None,
            discriminator=torch.cat([labelled, target_side]),
            terms={"iw_min": weights.min().detach().clone(), "iw_max": weights.max().detach().clone()},
        )

    def report(self, classes: list[str]) -> dict:
        """The class ratios ``p_T(y) / p_S(y)`` the run ended with (``p_S``: the class mix of the
        sampled source batches), so a user sees which classes the target was estimated to lack."""
        return {
            "class_ratios": dict(zip(classes, self.class_ratios.weights.tolist())),
            "class_ratio_updates": int(self.class_ratios.updates),
        }
