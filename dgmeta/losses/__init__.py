"""Losses used by the base DA learners: gradient reversal + domain-adversarial loss (DANN),
classifier discrepancy (MCD) and prediction entropy (JiGen's DA variant)."""

from dgmeta.losses.adversarial import (
    AdversarialResult,
    DomainAdversarialLoss,
    DomainDiscriminator,
    GradientReversalLayer,
    GradientReverse,
    dann_lambda,
    grad_reverse,
)
from dgmeta.losses.discrepancy import classifier_discrepancy
from dgmeta.losses.entropy import prediction_entropy

__all__ = [
    "AdversarialResult",
    "DomainAdversarialLoss",
    "DomainDiscriminator",
    "GradientReversalLayer",
    "GradientReverse",
    "classifier_discrepancy",
    "dann_lambda",
    "grad_reverse",
    "prediction_entropy",
]
