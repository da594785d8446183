"""IWDAN (dgmeta/learners/iwdann.py) and its pieces: the class-ratio QP recovers known ratios, the
estimator's moving average, the within-domain weights of the adversarial loss, IWDAN = DANN while
the ratios are 1, the ratios it learns on a label-shifted fixture, and meta episodes that leave its
statistics alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgmeta.hparams import apply_overrides, default_hparams
from dgmeta.learners.base import Batch, LearnerContext
from dgmeta.learners.registry import create_learner
from dgmeta.losses import ClassRatioEstimator, DomainAdversarialLoss, solve_class_ratios
from dgmeta.meta import create_stepper
from test_meta_fixtures import single_thread  # noqa: F401  (autouse)
from test_meta_fixtures import DTYPE, TinyNet, blobs

S, K = 3, 3


def learner(kind: str = "iwdann", protocol: str = "msda", seed: int = 0, **hp):
    torch.manual_seed(seed)
    context = LearnerContext(num_classes=K, num_domains=S + (protocol == "ssda"), protocol=protocol, total_steps=100)
    hparams = apply_overrides(default_hparams(kind), {"disc_hidden": 8, "disc_dropout": 0.0, **hp})
    return create_learner(kind, TinyNet().to(DTYPE), context, hparams).to(DTYPE)


def shifted_batch(seed: int, target_classes=(0, 0, 0, 0, 0, 0, 1, 2)) -> Batch:
    """Sources with balanced classes; the target drawn from the same class blobs (shifted a little)
    with class 0 six times as common as each other class."""
    batch = blobs(S, 6, seed=seed)
    pool = blobs(1, 24, seed=seed + 100, first_domain=S, shift=0.5)
    picks = torch.cat([torch.nonzero(pool.y == c).flatten()[: list(target_classes).count(c)] for c in range(K)])
    return batch.with_target(pool.x[picks])


def test_the_qp_recovers_known_class_ratios():
    rng = np.random.default_rng(0)
    conditional = np.array([[0.8, 0.1, 0.2], [0.15, 0.7, 0.1], [0.05, 0.2, 0.7]])  # P(yhat = i | y = j)
    source, target = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.3, 0.6])
    ratios = solve_class_ratios(conditional * source[None, :], conditional @ target, source)
    assert np.allclose(ratios, target / source, atol=1e-6)

    noisy = solve_class_ratios(conditional * source[None, :], conditional @ target + rng.normal(0, 0.05, 3), source)
    assert (noisy >= 0).all() and source @ noisy == pytest.approx(1.0)
    # a class the source never showed keeps ratio 1 and does not disturb the others
    padded = solve_class_ratios(np.pad(conditional * source, ((0, 1), (0, 1))), np.append(conditional @ target, 0), np.append(source, 0))
    assert np.allclose(padded, np.append(target / source, 1.0), atol=1e-6)


def test_the_estimator_folds_each_interval_into_a_moving_average():
    estimator = ClassRatioEstimator(K, moving_average=0.25)
    assert not estimator.update()  # nothing observed: nothing changes
    assert torch.equal(estimator.weights, torch.ones(K))
    # confident, correct source predictions; the target predicted 60/20/20 against a 1/3 source mix
    big = 30.0
    source_y = torch.tensor([0, 1, 2] * 10)
    target_y = torch.tensor([0] * 18 + [1] * 6 + [2] * 6)
    estimator.observe(big * F.one_hot(source_y, K).float(), source_y, big * F.one_hot(target_y, K).float())
    assert int(estimator.steps) == 1 and estimator.update()
    expected = 0.25 * torch.ones(K) + 0.75 * torch.tensor([1.8, 0.6, 0.6])
    assert torch.allclose(estimator.weights, expected, atol=1e-4)
    assert float(estimator.source_counts.sum()) == 0 and float(estimator.confusion.sum()) == 0  # a new interval
    assert torch.equal(estimator.sample_weights(torch.tensor([2, 0])), estimator.weights[[2, 0]])


def test_within_domain_weights_count_like_repeated_samples():
    torch.manual_seed(0)
    adversary = DomainAdversarialLoss(torch.nn.Linear(4, 2).to(DTYPE))
    features = torch.randn(5, 4, dtype=DTYPE)
    domains = torch.tensor([0, 0, 0, 1, 1])
    weighted, _ = adversary(features, domains, 1.0, torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0], dtype=DTYPE))
    weighted = weighted.detach()
    repeated, _ = adversary(features[[0, 0, 1, 2, 3, 4]], domains[[0, 0, 1, 2, 3, 4]], 1.0)
    assert float(weighted) == pytest.approx(repeated.item(), rel=1e-12)
    uniform, _ = adversary(features, domains, 1.0, torch.full((5,), 3.0, dtype=DTYPE))
    plain, _ = adversary(features, domains, 1.0)
    assert uniform.item() == pytest.approx(plain.item(), rel=1e-12)  # only the ratios within a domain matter


@pytest.mark.parametrize("protocol", ["msda", "ssda"])
def test_iwdann_is_dann_while_the_ratios_are_one(protocol):
    batch = shifted_batch(0)
    if protocol == "ssda":
        shots = blobs(1, 3, seed=7, first_domain=S)
        batch = Batch(torch.cat([batch.x, shots.x]), torch.cat([batch.y, shots.y]), torch.cat([batch.domain, shots.domain]), batch.target_x)
    iw, plain = learner("iwdann", protocol), learner("dann", protocol)
    plain.load_state_dict(iw.state_dict(), strict=False)
    iw.eval(), plain.eval()  # no statistics are gathered outside training
    a, b = iw(batch, stage="main", progress=0.5), plain(batch, stage="main", progress=0.5)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-12)
    assert int(iw.class_ratios.steps) == 0


def test_the_ratios_weight_source_images_by_their_class():
    iw = learner()
    with torch.no_grad():
        iw.class_ratios.weights.copy_(torch.tensor([3.0, 0.5, 0.0]))
    iw.eval()
    batch = shifted_batch(0)
    objective = iw(batch, stage="main", progress=1.0)
    ce = F.cross_entropy(iw.predict(batch.x), batch.y, reduction="none")
    w = iw.class_ratios.weights.to(DTYPE)[batch.y]
    assert objective.terms["cls"].item() == pytest.approx(((w * ce).sum() / w.sum()).item(), rel=1e-10)
    iw.hparams["iw_classification"] = False
    assert iw(batch, stage="main", progress=1.0).terms["cls"].item() == pytest.approx(ce.mean().item(), rel=1e-10)


def test_iwdann_learns_the_targets_class_mix_on_a_label_shifted_fixture():
    """Sources 1/3 per class, target 6:1:1: the learned ratios approach (2.25, 0.375, 0.375)."""
    iw = learner(iw_update_every=10, iw_moving_average=0.5, lambda_max=0.1)
    iw.train()
    optimizer = torch.optim.Adam(iw.parameters(), lr=0.02)
    for step in range(120):
        objective = iw(shifted_batch(step), stage="main", progress=step / 120)
        optimizer.zero_grad()
        objective.loss.backward()
        optimizer.step()
    assert int(iw.class_ratios.updates) == 12
    truth = torch.tensor([6 / 8, 1 / 8, 1 / 8], dtype=DTYPE) * 3
    ratios = iw.class_ratios.weights.to(DTYPE)
    assert torch.allclose(ratios, truth, atol=0.15), ratios
    assert float(objective.terms["iw_max"]) == pytest.approx(float(ratios.max()))
    report = iw.report(["x", "y", "z"])
    assert report["class_ratio_updates"] == 12
    assert list(report["class_ratios"].values()) == pytest.approx(ratios.tolist())


def test_meta_episodes_leave_the_class_ratio_statistics_alone():
    """Only the base step observes a batch: episodes run on scratch copies of the buffers."""
    iw = learner()
    hparams = apply_overrides(default_hparams("iwdann", "init"), {"disc_hidden": 8})
    stepper = create_stepper("init", iw, hparams, 10, S, seed=0)
    for seed in range(3):
        stepper.step(shifted_batch(seed))
    assert int(iw.class_ratios.steps) == 3
    assert float(iw.class_ratios.source_counts.sum()) == 3 * S * 6
