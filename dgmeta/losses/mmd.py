"""Kernel maximum mean discrepancy with a sum of Gaussian kernels, as DomainBed's MMD learner uses it."""

from __future__ import annotations

from torch import Tensor

#: DomainBed's bandwidths: one kernel per scale, so no single bandwidth has to fit the features
GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """``[n_x, n_y]`` squared Euclidean distances, clamped above zero (rounding can make them negative)."""
    x_norm = x.pow(2).sum(dim=-1, keepdim=True)
    y_norm = y.pow(2).sum(dim=-1, keepdim=True)
    return (x_norm - 2.0 * x @ y.t() + y_norm.t()).clamp_min(1e-30)


def gaussian_kernel(x: Tensor, y: Tensor, gammas: tuple[float, ...] = GAMMAS) -> Tensor:
    """``sum_g exp(-g ||x_i - y_j||^2)`` for every pair of rows."""
    distances = squared_distances(x, y)
    return sum((-gamma * distances).exp() for gamma in gammas)


def mmd_loss(x: Tensor, y: Tensor, gammas: tuple[float, ...] = GAMMAS) -> Tensor:
    r"""The (biased) squared MMD between two feature sets under :func:`gaussian_kernel`:

    .. math::
        \overline{K(x, x)} + \overline{K(y, y)} - 2\, \overline{K(x, y)}

    Zero for identical sets, positive when the distributions differ (the kernel sum is
    characteristic). Args: ``[n_x, d]`` and ``[n_y, d]`` features; returns a scalar.
    """
    return gaussian_kernel(x, x, gammas).mean() + gaussian_kernel(y, y, gammas).mean() - 2 * gaussian_kernel(x, y, gammas).mean()
