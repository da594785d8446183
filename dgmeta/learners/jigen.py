"""JiGen: domain generalization by solving jigsaw puzzles (Carlucci et al., CVPR 2019).

A jigsaw head on the shared features classifies which permutation scrambled an image's
``grid x grid`` tiles. Jigsaw classes: **0 = unshuffled**, ``1..P`` = the permutations of
:func:`~dgmeta.learners.jigsaw.jigsaw_permutations` (whose row 0 is the identity), so the head
has ``P + 1`` outputs. In every batch exactly ``round(unshuffled_ratio * n)`` images (at least
one) of the labelled part, and the same fraction of the target part, stay unshuffled; the rest
get a uniformly drawn permutation. Tiling of sizes not divisible by ``grid``: see
:mod:`dgmeta.learners.jigsaw`.

Loss (one stage, one featurizer pass over labelled + target images)::

    CE(classifier, unshuffled labelled) + jigsaw_weight * CE(jigsaw head, all labelled)
    # msda / ssda only, as in the paper's DA variant:
    + entropy_weight * H(classifier, unshuffled target) + target_jigsaw_weight * CE(jigsaw head, all target)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmeta.errors import ConfigError
from dgmeta.hparam_spec import HParam, at_least, fraction, positive
from dgmeta.learners.base import Batch, Learner, LearnerContext, Objective
from dgmeta.learners.jigsaw import jigsaw_permutations, shuffle_tiles
from dgmeta.learners.registry import LEARNERS
from dgmeta.losses import prediction_entropy

#: the permutation set is part of the task definition, so every run uses the same one
PERMUTATION_SEED = 0


@LEARNERS.register("jigen")
class JiGen(Learner):
    name = "jigen"
    protocols = ("dg", "msda", "ssda")
    default_protocol = "dg"
    HPARAMS = {
        "num_permutations": HParam(30, lambda r: int(r.choice([30, 100])), "permutation classes P", positive(integer=True)),
        "unshuffled_ratio": HParam(0.7, lambda r: float(r.uniform(0.6, 0.9)), "fraction of each batch left unshuffled (beta)", fraction(high_open=False)),
        "jigsaw_weight": HParam(0.7, lambda r: float(r.uniform(0.1, 0.9)), "auxiliary jigsaw loss weight (alpha)", at_least(0)),
        "target_jigsaw_weight": HParam(0.7, lambda r: float(r.uniform(0.1, 0.9)), "jigsaw weight on target images (DA)", at_least(0)),
        "entropy_weight": HParam(0.1, lambda r: float(r.choice([0.05, 0.1, 0.2])), "target entropy weight (DA)", at_least(0)),
        "grid": HParam(3, lambda r: 3, "tiles per side", at_least(2, integer=True)),
    }

    def __init__(self, network, context: LearnerContext, hparams: dict):
        super().__init__(network, context, hparams)
        self.grid = int(self.hparams["grid"])
        self.unshuffled_ratio = float(self.hparams["unshuffled_ratio"])
        if not 0.0 < self.unshuffled_ratio <= 1.0:
            raise ConfigError(
                f"--set unshuffled_ratio={self.unshuffled_ratio} must be in (0, 1]",
                "the classifier only sees unshuffled images; use e.g. --set unshuffled_ratio=0.7",
            )
        permutations = jigsaw_permutations(int(self.hparams["num_permutations"]), self.grid, PERMUTATION_SEED)
        self.num_permutations = permutations.shape[0] - 1
        # derived from hparams, so not saved with the weights
        self.register_buffer("permutations", permutations, persistent=False)
        self.jigsaw_head = nn.Linear(self.feature_dim, self.num_permutations + 1)

    def scramble(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(images, jigsaw labels)``: a random ``1 - unshuffled_ratio`` of ``x`` shuffled."""
        n = x.shape[0]
        keep = min(n, max(1, round(self.unshuffled_ratio * n)))
        labels = torch.zeros(n, dtype=torch.long, device=x.device)
        shuffled = torch.randperm(n, device=x.device)[keep:]
        labels[shuffled] = torch.randint(1, self.num_permutations + 1, (len(shuffled),), device=x.device)
        return shuffle_tiles(x, labels, self.permutations, self.grid), labels

    def objective(self, stage: str, batch: Batch, progress: float) -> Objective:
        x, jig_labels = self.scramble(batch.x)
        target = None if self.context.protocol == "dg" else self.scramble(self.target_images(batch))
        features = self.featurizer(x if target is None else torch.cat([x, target[0]]))
        labelled = features[: len(batch)]
        unshuffled = jig_labels == 0
        cls = F.cross_entropy(self.classifier(labelled[unshuffled]), batch.y[unshuffled])
        jigsaw = F.cross_entropy(self.jigsaw_head(labelled), jig_labels)
        loss = cls + float(self.hparams["jigsaw_weight"]) * jigsaw
        terms = {"cls": cls.detach(), "jigsaw": jigsaw.detach()}
        if target is not None:
            target_features, target_jig_labels = features[len(batch):], target[1]
            entropy = prediction_entropy(self.classifier(target_features[target_jig_labels == 0]))
            target_jigsaw = F.cross_entropy(self.jigsaw_head(target_features), target_jig_labels)
            loss = (
                loss
                + float(self.hparams["entropy_weight"]) * entropy
                + float(self.hparams["target_jigsaw_weight"]) * target_jigsaw
            )
            terms.update(entropy=entropy.detach(), target_jigsaw=target_jigsaw.detach())
        return Objective(loss, terms)
