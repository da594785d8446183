"""Domain-adversarial training (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016).

A domain discriminator learns to tell domains apart from features; a gradient reversal
layer (GRL) between featurizer and discriminator flips the sign of the gradient flowing back
into the featurizer, so a single backward pass of ``classification + adversarial`` loss makes
the discriminator better at telling domains apart and the featurizer worse at letting it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GradientReverse(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``-coeff`` backward.

    The backward is written with differentiable ops, so second-order meta-gradients
    (``create_graph=True``) pass through it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * -ctx.coeff, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    return GradientReverse.apply(x, coeff)


class GradientReversalLayer(nn.Module):
    """Module form of :class:`GradientReverse`; ``coeff`` may be overridden per call."""

    def __init__(self, coeff: float = 1.0):
        super().__init__()
        self.coeff = coeff

    def forward(self, x: Tensor, coeff: float | None = None) -> Tensor:
        return grad_reverse(x, self.coeff if coeff is None else coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    r"""DANN's adaptation-factor schedule :math:`\lambda_p = 2 / (1 + e^{-\gamma p}) - 1`.

    Starts at 0 (``p = 0``) so the featurizer is not pushed around by a discriminator that
    has not learnt anything yet, and approaches 1 as ``p -> 1`` (``0.9999`` for ``gamma=10``).
    """
    p = max(0.0, float(progress))
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DomainDiscriminator(nn.Module):
    """MLP ``feature_dim -> [hidden, ReLU, Dropout] x layers -> num_domains`` logits.

    ``layers=0`` gives a linear discriminator.
    """

    def __init__(self, feature_dim: int, num_domains: int, hidden: int = 256, layers: int = 2, dropout: float = 0.5):
        super().__init__()
        blocks: list[nn.Module] = []
        width = feature_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, num_domains))
        self.net = nn.Sequential(*blocks)
        self.num_domains = num_domains

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


class AdversarialResult(NamedTuple):
    loss: Tensor  #: discriminator cross-entropy (differentiable, through the GRL)
    accuracy: Tensor  #: domain-balanced discriminator accuracy (detached, for logging)


class DomainAdversarialLoss(nn.Module):
    r"""The domain-adversarial loss of DANN.

    Features go through a gradient reversal layer (coefficient ``coeff`` = :math:`\lambda`)
    into ``discriminator``; the loss is the discriminator's cross-entropy against the domain
    labels. Minimising it trains the discriminator to separate the domains while the
    reversed gradient trains the featurizer to make them inseparable:

    .. math::
        \mathcal{L}_{adv} = \sum_{d} \frac{1}{|D_{present}|} \frac{1}{n_d}
            \sum_{i : d_i = d} \mathrm{CE}(D(\mathrm{GRL}_\lambda(f_i)), d)

    Each domain present in the batch weighs the same however many samples it has (the
    Transfer-Learning-Library's ``0.5 * (source + target)``, generalised to K domains), so a
    48-image source batch against a 16-image target batch does not let the discriminator win
    by predicting "source". Accuracy is balanced the same way: chance is ``1 / |D_present|``.

    Args:
        discriminator: maps ``[N, F]`` features to ``[N, K]`` domain logits,
            e.g. :class:`DomainDiscriminator`.

    Inputs:
        - features: ``[N, F]`` features (the featurizer's output, not detached).
        - domains: ``[N]`` long domain labels in ``0..K-1``.
        - coeff: the GRL coefficient :math:`\lambda` (``0`` trains only the discriminator).
        - sample_weights: optional ``[N]`` non-negative weights *within* each domain (e.g. IWDAN's
          class ratios on the source side): a domain's samples weigh in proportion to them and the
          domain as a whole still weighs ``1 / |D_present|``. ``None`` = uniform.

    Returns:
        :class:`AdversarialResult` ``(loss, accuracy)``.

    Examples::

        >>> adversary = DomainAdversarialLoss(DomainDiscriminator(1024, 2, hidden=256))
        >>> f = featurizer(torch.cat([x_source, x_target]))
        >>> domains = torch.cat([torch.zeros(len(x_source)), torch.ones(len(x_target))]).long()
        >>> loss, acc = adversary(f, domains, coeff=dann_lambda(progress))
        >>> (classification_loss + loss).backward()
    """

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator
        self.grl = GradientReversalLayer()

    def forward(
        self, features: Tensor, domains: Tensor, coeff: float = 1.0, sample_weights: Tensor | None = None
    ) -> AdversarialResult:
        logits = self.discriminator(self.grl(features, coeff))
        dtype = torch.promote_types(logits.dtype, torch.float32)
        weights = _domain_balanced_weights(domains, logits.shape[1], sample_weights, dtype)
        loss = (weights * F.cross_entropy(logits, domains, reduction="none")).sum()
        correct = (logits.detach().argmax(dim=1) == domains).to(weights.dtype)
        return AdversarialResult(loss, (weights * correct).sum().detach())


def _domain_balanced_weights(
    domains: Tensor, num_domains: int, sample_weights: Tensor | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Per-sample weights ``s_i / (sum_{j in d_i} s_j * |domains present|)`` (``s = 1``: ``1 / (n_d * |present|)``);
    they sum to 1. A domain whose sample weights are all zero drops out, as if absent."""
    if sample_weights is None:
        sample_weights = torch.ones(len(domains), device=domains.device)
    sample_weights = sample_weights.detach().to(dtype)
    totals = torch.zeros(num_domains, dtype=sample_weights.dtype, device=domains.device).index_add_(0, domains, sample_weights)
    present = (totals > 0).sum()
    return sample_weights / (totals[domains].clamp_min(torch.finfo(totals.dtype).tiny) * present)
