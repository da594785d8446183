"""Class ratios ``w_y = p_T(y) / p_S(y)`` under label shift, estimated from the model's own predictions.

Under label shift the target's prediction marginal ``mu_i = P_T(yhat = i)`` is the source confusion
matrix ``C_ij = P_S(yhat = i, y = j)`` applied to the class ratios: ``mu = C w`` (black-box shift
estimation, Lipton et al., ICML 2018). IWDAN (Combes et al., NeurIPS 2020) solves it as the quadratic
program ``min ||C w - mu||^2`` subject to ``w >= 0`` and ``sum_j w_j p_S(j) = 1`` (the reweighted
source must stay a distribution) on soft predictions accumulated over an interval, and moves its
weights toward each new solution by a moving average. :class:`ClassRatioEstimator` keeps those
statistics as buffers, so they are checkpointed with the learner and a meta episode evaluated on
scratch buffers (``dgmeta.meta.gradient.scratch_buffers``) leaves the real ones untouched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import Tensor, nn

#: how strongly the equality constraint row weighs in the least-squares solve (then made exact)
_CONSTRAINT_WEIGHT = 1e3


def solve_class_ratios(confusion: np.ndarray, target_marginal: np.ndarray, source_prior: np.ndarray) -> np.ndarray:
    """``argmin_w ||C w - mu||^2`` over ``w >= 0`` with ``source_prior . w = 1``.

    ``confusion[i, j] = P_S(yhat = i, y = j)``, ``target_marginal[i] = P_T(yhat = i)``,
    ``source_prior[j] = P_S(y = j)``. Classes the source never showed keep ratio 1 (no sample
    of theirs is ever weighted)."""
    confusion, mu, prior = (np.asarray(a, dtype=np.float64) for a in (confusion, target_marginal, source_prior))
    seen = prior > 0
    ratios = np.ones(len(prior))
    a = np.vstack([confusion[:, seen], _CONSTRAINT_WEIGHT * prior[seen][None, :]])
    b = np.concatenate([mu, [_CONSTRAINT_WEIGHT]])
    solution, _ = nnls(a, b)
    mass = float(prior[seen] @ solution)
    ratios[seen] = solution / mass if mass > 0 else 1.0
    return ratios


class ClassRatioEstimator(nn.Module):
    """Running IWDAN class-ratio estimate ``weights`` (``[K]``, starts at 1 = no label shift).

    :meth:`observe` accumulates one step's statistics (labelled source logits and labels, unlabelled
    target logits; soft predictions, as the official code); :meth:`update` solves for the ratios over
    everything observed since the last update, sets ``weights <- m * weights + (1 - m) * solution``
    (``moving_average`` = m) and starts a new interval.
    """

    def __init__(self, num_classes: int, moving_average: float = 0.5):
        super().__init__()
        self.num_classes = int(num_classes)
        self.moving_average = float(moving_average)
        self.register_buffer("weights", torch.ones(num_classes))
        self.register_buffer("confusion", torch.zeros(num_classes, num_classes))
        self.register_buffer("target_mass", torch.zeros(num_classes))
        self.register_buffer("source_counts", torch.zeros(num_classes))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # observe() calls so far
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def observe(self, source_logits: Tensor, source_labels: Tensor, target_logits: Tensor) -> None:
        labels = F.one_hot(source_labels, self.num_classes).to(self.confusion.dtype)
        self.confusion += F.softmax(source_logits.detach(), dim=1).to(labels.dtype).T @ labels
        self.source_counts += labels.sum(0)
        self.target_mass += F.softmax(target_logits.detach(), dim=1).to(labels.dtype).sum(0)
        self.steps += 1

    @torch.no_grad()
    def update(self) -> bool:
        """Fold the interval's solution into ``weights``; ``False`` (nothing changes) when the
        interval saw no source or no target image."""
        n_source, n_target = float(self.source_counts.sum()), float(self.target_mass.sum())
        if n_source == 0 or n_target == 0:
            return False
        solution = solve_class_ratios(
            (self.confusion / n_source).cpu().numpy(),
            (self.target_mass / n_target).cpu().numpy(),
            (self.source_counts / n_source).cpu().numpy(),
        )
        new = torch.as_tensor(solution, dtype=self.weights.dtype, device=self.weights.device)
        self.weights.mul_(self.moving_average).add_((1 - self.moving_average) * new)
        for buffer in (self.confusion, self.target_mass, self.source_counts):
            buffer.zero_()
        self.updates += 1
        return True

    def sample_weights(self, labels: Tensor) -> Tensor:
        """Each labelled source image's ratio ``w_{y_i}`` (detached)."""
        return self.weights[labels].detach()
