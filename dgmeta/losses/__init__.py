"""Losses used by the base DA learners: gradient reversal + domain-adversarial loss (DANN),
classifier discrepancy (MCD), prediction entropy (JiGen's DA variant, MME) and the label-shift class
ratios of IWDAN."""

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
from dgmeta.losses.label_shift import ClassRatioEstimator, solve_class_ratios

__all__ = [
    "AdversarialResult",
    "ClassRatioEstimator",
    "DomainAdversarialLoss",
    "DomainDiscriminator",
    "GradientReversalLayer",
    "GradientReverse",
    "classifier_discrepancy",
    "dann_lambda",
    "grad_reverse",
    "prediction_entropy",
    "solve_class_ratios",
]
