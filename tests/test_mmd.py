"""MMD (dgmeta/learners/mmd.py, dgmeta/losses/mmd.py): the kernel loss, the learner, and the meta wrappers around it."""

from __future__ import annotations

import pytest
import torch

from dgmeta.learners.registry import learner_class, learner_names
from dgmeta.losses.mmd import GAMMAS, gaussian_kernel, mmd_loss
from test_learners import _one_thread  # noqa: F401  (autouse)
from test_learners import test_learner_beats_chance_on_unseen_target as beats_chance
from test_learners import learner, make_batch
from test_meta_learners import test_every_base_meta_pair_trains as every_pair_trains


def sample(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.5 + shift


# -- the loss ---------------------------------------------------------------------------------------


def test_mmd_is_zero_for_identical_samples_and_positive_for_shifted_ones():
    x = sample(60, 0)
    assert mmd_loss(x, x.clone()).item() == 0.0
    same_distribution = mmd_loss(x, sample(60, 1)).item()
    shifted = [mmd_loss(x, sample(60, 1, shift)).item() for shift in (0.5, 1.0, 2.0)]
    assert all(value > 0 for value in shifted)
    assert same_distribution < shifted[0] < shifted[1] < shifted[2]  # grows with the shift


def test_the_kernel_sums_one_gaussian_per_bandwidth():
    x, y = sample(3, 0), sample(5, 1)
    distances = torch.cdist(x, y).pow(2)
    expected = sum(torch.exp(-gamma * distances) for gamma in GAMMAS)
    torch.testing.assert_close(gaussian_kernel(x, y), expected)
    assert torch.allclose(gaussian_kernel(x, x).diagonal(), torch.full((3,), float(len(GAMMAS)), dtype=torch.float64))


def test_a_gradient_step_on_the_mmd_moves_the_samples_together():
    target = sample(50, 1, shift=1.0)
    x = sample(50, 0).requires_grad_(True)
    first = mmd_loss(x, target)
    (grad,) = torch.autograd.grad(first, x)
    with torch.no_grad():
        x -= 5.0 * grad
    assert mmd_loss(x, target).item() < first.item()


# -- the learner ----------------------------------------------------------------------------------


def test_mmd_is_registered_with_its_protocols_and_weight():
    assert "mmd" in learner_names()
    cls = learner_class("mmd")
    assert {"dg", "msda"} <= set(cls.protocols) and cls.HPARAMS["mmd_gamma"].default == 1.0


def test_the_penalty_is_the_mean_mmd_over_domain_pairs():
    batch = make_batch("msda", torch.Generator().manual_seed(0))
    model = learner("mmd", "msda", mmd_gamma=0.5)
    out = model(batch, stage="main", progress=0.0)
    with torch.no_grad():
        f = model.featurizer(torch.cat([batch.x, batch.target_x]))
    groups = [f[:12], f[12:24], f[24:]]  # source 0, source 1, the unlabelled target
    expected = (mmd_loss(groups[0], groups[1]) + mmd_loss(groups[0], groups[2]) + mmd_loss(groups[1], groups[2])) / 3
    torch.testing.assert_close(out.terms["align"], expected)
    torch.testing.assert_close(out.loss, out.terms["cls"] + 0.5 * out.terms["align"])


@pytest.mark.parametrize("protocol", ["dg", "msda"])
def test_mmd_beats_chance_on_an_unseen_domain(protocol):
    beats_chance("mmd", protocol)  # test_learners' check: 40 steps, target accuracy > 0.8 (chance 0.33)


# -- under the meta wrappers, unchanged -------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["dg", "msda"])
@pytest.mark.parametrize("meta", ["init", "critic", "init+critic"])
def test_mmd_trains_under_every_meta_wrapper(protocol, meta):
    # test_meta_learners' check: finite logs, a non-zero meta-gradient, a critic that learns, a featurizer that moves
    every_pair_trains("mmd", protocol, meta, {"critic_hidden": 16})
