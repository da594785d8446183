"""MME: minimax entropy for semi-supervised domain adaptation (Saito et al., ICCV 2019).

The network's linear head is replaced by a **cosine classifier**: ``logits = W_n f_n / T`` with
``f_n = f / ||f||`` and every class weight vector ``w_k`` normalised too, so the logits are cosine
similarities to class prototypes scaled by ``1 / T`` (``mme_temperature``, 0.05 as in the paper).
(The official code normalises only the features and lets weight decay bound ``||w_k||``;
normalising both keeps the temperature the only logit scale.)

Loss, one stage, one optimizer step (like DANN here)::

    CE(labelled sources [+ labelled target shots under ssda])
    - mme_lambda * H(classifier(GRL(f(unlabelled target))))

``H`` is the mean prediction entropy. The unlabelled features pass a gradient reversal layer
before the classifier, so the one backward makes the **classifier ascend** ``H`` (minimising
``-lambda H`` moves the prototypes toward the unlabelled target features) while the
**featurizer descends** ``H`` (its gradient is reversed: target features cluster around the
prototypes). The official code takes two optimizer steps per iteration (CE, then the entropy
term) with one shared optimizer; summing them into one step keeps ``mme_lambda`` meaningful under
Adam (separate normalised steps would move the entropy term as far as the CE term whatever
``lambda``). Labelled and unlabelled images go through the featurizer separately, as in the
official code.

``ssda`` is the paper's setting; ``msda`` (no target shots) runs the same loss. The saved head is a
linear layer ``W_n / T`` (zero bias) applied to the unnormalised features: its logits are
``||f||`` times the cosine logits, so every image gets the same class (argmax) as ``predict``,
not the same probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmeta.errors import ConfigError
from dgmeta.hparam_spec import HParam, at_least, positive
from dgmeta.learners.base import Batch, Learner, LearnerContext, Objective
from dgmeta.learners.registry import LEARNERS
from dgmeta.losses import grad_reverse, prediction_entropy


class CosineClassifier(nn.Module):
    """``logits = normalize(W) normalize(f) / temperature``, optionally after dropout."""

    def __init__(self, feature_dim: int, num_classes: int, temperature: float = 0.05, dropout: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, feature_dim))
        nn.init.normal_(self.weight, std=0.1)  # the official code's initialisation of its head
        self.temperature = float(temperature)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, features: Tensor) -> Tensor:
        return F.linear(F.normalize(self.dropout(features), dim=1), F.normalize(self.weight, dim=1)) / self.temperature

    def as_linear(self) -> nn.Linear:
        linear = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(F.normalize(self.weight, dim=1) / self.temperature)
            linear.bias.zero_()
        return linear.to(self.weight.device, self.weight.dtype)


@LEARNERS.register("mme")
class MME(Learner):
    name = "mme"
    protocols = ("ssda", "msda")
    default_protocol = "ssda"
    HPARAMS = {
        "mme_lambda": HParam(0.1, lambda r: float(r.choice([0.05, 0.1, 0.2])), "weight of the minimax target entropy (MME's lambda)", at_least(0)),
        "mme_temperature": HParam(0.05, lambda r: float(r.choice([0.05, 0.1])), "temperature T of the cosine classifier", positive()),
    }
    keeps_linear_head = False  # replaced by the cosine classifier

    def __init__(self, network, context: LearnerContext, hparams: dict):
        super().__init__(network, context, hparams)
        temperature = float(self.hparams["mme_temperature"])
        if not temperature > 0:
            raise ConfigError(f"--set mme_temperature={temperature} must be positive", "use e.g. --set mme_temperature=0.05")
        reference = next(self.featurizer.parameters())
        self.classifier = CosineClassifier(
            self.feature_dim, context.num_classes, temperature, float(self.hparams["dropout"])
        ).to(reference.device, reference.dtype)

    def export_classifier(self) -> nn.Module:
        return self.classifier.as_linear()

    def objective(self, stage: str, batch: Batch, progress: float) -> Objective:
        cls = F.cross_entropy(self.classifier(self.featurizer(batch.x)), batch.y)
        target_features = self.featurizer(self.target_images(batch))
        entropy = prediction_entropy(self.classifier(grad_reverse(target_features, 1.0)))
        weight = float(self.hparams["mme_lambda"])
        return Objective(cls - weight * entropy, {"cls": cls.detach(), "entropy": entropy.detach()})
