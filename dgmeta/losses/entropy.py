"""Prediction entropy, the unlabelled-target term of JiGen's DA variant (and of entropy
minimisation in general): low entropy pushes decision boundaries away from target samples."""

from __future__ import annotations

from torch import Tensor


def prediction_entropy(logits: Tensor) -> Tensor:
    r"""Mean Shannon entropy (nats) of the softmax predictions.

    .. math::
        H = -\frac{1}{N} \sum_n \sum_k p(k \mid x_n) \log p(k \mid x_n)

    Args:
        logits: ``[N, K]`` class logits.

    Returns:
        A scalar in ``[0, log K]``. Computed from ``log_softmax`` so confident predictions
        (``p -> 0`` for most classes) never produce ``0 * log 0 = nan``.
    """
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()
