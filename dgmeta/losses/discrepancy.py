"""Classifier discrepancy of Maximum Classifier Discrepancy (Saito et al., CVPR 2018)."""

from __future__ import annotations

from torch import Tensor


def classifier_discrepancy(logits1: Tensor, logits2: Tensor) -> Tensor:
    r"""Mean absolute difference of the two classifiers' class probabilities.

    .. math::
        d(p_1, p_2) = \frac{1}{N K} \sum_{n, k} |p_1(k \mid x_n) - p_2(k \mid x_n)|

    Args:
        logits1, logits2: ``[N, K]`` logits of the two classifiers on the same images.

    Returns:
        A scalar in ``[0, 2/K]``; MCD's classifiers maximise it on target images and the
        generator minimises it.
    """
    return (logits1.softmax(dim=1) - logits2.softmax(dim=1)).abs().mean()
