"""CORAL: correlation alignment of deep features (Sun & Saenko, ECCV-W 2016), in DomainBed's form."""

from __future__ import annotations

from torch import Tensor


def coral_loss(x: Tensor, y: Tensor) -> Tensor:
    r"""Mean squared difference of the two feature sets' means plus that of their covariances.

    .. math::
        \frac{1}{d} \lVert \mu_x - \mu_y \rVert^2 + \frac{1}{d^2} \lVert C_x - C_y \rVert_F^2

    with unbiased covariances ``C = (F - mu)^T (F - mu) / (n - 1)`` (DomainBed's ``mean_cov``
    kernel; Deep CORAL's own loss is the covariance term alone, scaled by ``1 / 4d^2``).

    Args:
        x, y: ``[n_x, d]`` and ``[n_y, d]`` features of two domains, at least two rows each.

    Returns:
        A scalar, zero exactly when the means and covariances agree.
    """
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    centred_x, centred_y = x - mean_x, y - mean_y
    cov_x = centred_x.t() @ centred_x / (len(x) - 1)
    cov_y = centred_y.t() @ centred_y / (len(y) - 1)
    return (mean_x - mean_y).pow(2).mean() + (cov_x - cov_y).pow(2).mean()
