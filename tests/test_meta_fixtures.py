"""Tiny learners and data for the meta-level tests (imported by the other tests/test_meta_*.py).

``TinyNet``: a featurizer (Linear, optional BatchNorm1d, Tanh) and a linear classifier on vectors, in
float64 so finite differences are accurate. ``TwoHeads``: an MCD-like learner with two classifiers
and three stages (A: all, B: the heads, C: the featurizer twice), so the inner loop's stage order,
per-stage parameters and repeat counts are all exercised.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dgmeta.learners.base import Batch, Learner, LearnerContext, Objective, Stage
from dgmeta.learners.erm import ERM

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def single_thread():
    """These models are tiny: one thread avoids paying for thread synchronisation on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    def __init__(self, in_dim: int = 5, feature_dim: int = 4, num_classes: int = 3, batchnorm: bool = False, activation: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, feature_dim)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(feature_dim))
        if activation:
            layers.append(nn.Tanh())
        self.featurizer = nn.Sequential(*layers)
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim


class TwoHeads(Learner):
    """MCD-shaped: A = both heads' CE (all modules), B = CE - discrepancy (heads), C = discrepancy (featurizer, twice)."""

    name = "two_heads"

    def __init__(self, network: nn.Module, context: LearnerContext, hparams: dict):
        super().__init__(network, context, hparams)
        self.classifier2 = nn.Linear(self.feature_dim, context.num_classes)

    def stages(self) -> list[Stage]:
        return [
            Stage("A", ("featurizer", "classifier", "classifier2")),
            Stage("B", ("classifier", "classifier2")),
            Stage("C", ("featurizer",), repeat=2),
        ]

    def _discrepancy(self, x: torch.Tensor) -> torch.Tensor:
        f = self.featurizer(x)
        return (F.softmax(self.classifier(f), 1) - F.softmax(self.classifier2(f), 1)).abs().mean()

    def objective(self, stage: str, batch: Batch, progress: float) -> Objective:
        f = self.featurizer(batch.x)
        ce = F.cross_entropy(self.classifier(f), batch.y) + F.cross_entropy(self.classifier2(f), batch.y)
        unlabelled = batch.x if batch.target_x is None else batch.target_x
        if stage == "A":
            return Objective(ce, {"ce": ce.detach()})
        disc = self._discrepancy(unlabelled)
        if stage == "B":
            return Objective(ce - disc, {"ce": ce.detach(), "disc": disc.detach()})
        return Objective(disc, {"disc": disc.detach()})


def make_learner(kind: str = "erm", sources: int = 3, protocol: str = "dg", hparams: dict | None = None, seed: int = 0, **net) -> Learner:
    torch.manual_seed(seed)
    network = TinyNet(**net).to(DTYPE)
    num_domains = sources + (1 if protocol == "ssda" else 0)
    context = LearnerContext(num_classes=network.classifier.out_features, num_domains=num_domains, protocol=protocol, total_steps=100)
    cls = {"erm": ERM, "two_heads": TwoHeads}[kind]
    return cls(network, context, dict(hparams or {})).to(DTYPE)


def blobs(
    domains: int,
    per_domain: int,
    seed: int,
    in_dim: int = 5,
    num_classes: int = 3,
    shift: float = 0.3,
    separation: float = 3.0,
    first_domain: int = 0,
) -> Batch:
    """Gaussian class blobs shared by all domains, each domain translated by its own small offset."""
    g = torch.Generator().manual_seed(seed)
    centers = separation * torch.randn(num_classes, in_dim, generator=torch.Generator().manual_seed(1234), dtype=DTYPE)
    xs, ys, ds = [], [], []
    for d in range(first_domain, first_domain + domains):
        offset = shift * torch.randn(in_dim, generator=torch.Generator().manual_seed(99 + d), dtype=DTYPE)
        y = torch.arange(per_domain) % num_classes
        xs.append(centers[y] + offset + torch.randn(per_domain, in_dim, generator=g, dtype=DTYPE))
        ys.append(y)
        ds.append(torch.full((per_domain,), d))
    return Batch(torch.cat(xs), torch.cat(ys), torch.cat(ds))


def accuracy(learner: Learner, batch: Batch) -> float:
    learner.eval()
    with torch.no_grad():
        return float((learner.predict(batch.x).argmax(1) == batch.y).double().mean())


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters, to compare before and after a step."""
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def base_gradient(learner, batch) -> dict[str, torch.Tensor]:
    """The gradient of the learner's own (stage "main") loss alone, with no meta term: the reference a step adds to."""
    learner.zero_grad(set_to_none=True)
    learner(batch, stage="main", progress=0.0).loss.backward()
    grads = {n: p.grad.clone() for n, p in learner.named_parameters()}
    learner.zero_grad(set_to_none=True)
    return grads
