"""CORAL (dgmeta/learners/coral.py, dgmeta/losses/coral.py): the loss, the learner, and the meta wrappers around it."""

from __future__ import annotations

import pytest
import torch

from dgmeta.errors import ConfigError
from dgmeta.learners.base import LearnerContext
from dgmeta.learners.registry import create_learner, learner_class, learner_names
from dgmeta.losses.coral import coral_loss
from test_learners import _one_thread  # noqa: F401  (autouse)
from test_learners import test_learner_beats_chance_on_unseen_target as beats_chance
from test_learners import NUM_CLASSES, TinyNetwork, coloured_images, hparams, learner, make_batch
from test_meta_learners import test_every_base_meta_pair_trains as every_pair_trains


def features(n: int, seed: int, scale: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(scale), generator=g, dtype=torch.float64) * torch.tensor(scale, dtype=torch.float64)


# -- the loss ---------------------------------------------------------------------------------------


def test_coral_loss_is_zero_for_identical_means_and_covariances():
    x = features(50, 0)
    assert coral_loss(x, x.clone()).item() == 0.0
    shuffled = x[torch.randperm(50, generator=torch.Generator().manual_seed(1))]  # same set, other order
    assert coral_loss(x, shuffled).item() < 1e-15


def test_coral_loss_sees_covariance_and_mean_gaps():
    x = features(400, 0)
    assert coral_loss(x, features(400, 1, scale=(3.0, 1.0, 1.0, 0.2))).item() > 0.5  # same mean, other covariance
    shifted = x + 2.0
    assert coral_loss(x, shifted).item() == pytest.approx(4.0, rel=1e-9)  # same covariance, mean gap 2 in each of 4 dims


def test_a_gradient_step_on_the_coral_loss_reduces_the_gap():
    target = features(200, 1, scale=(3.0, 1.0, 1.0, 0.2)) + 0.5
    x = features(200, 0).requires_grad_(True)
    losses = []
    for _ in range(20):
        loss = coral_loss(x, target)
        (grad,) = torch.autograd.grad(loss, x)
        losses.append(loss.item())
        with torch.no_grad():
            x -= 20.0 * grad
    assert losses[1] < losses[0]
    assert losses[-1] < 0.1 * losses[0], losses


# -- the learner ----------------------------------------------------------------------------------


def test_coral_is_registered_with_its_protocols_and_weight():
    assert "coral" in learner_names()
    cls = learner_class("coral")
    assert {"dg", "msda"} <= set(cls.protocols) and cls.default_protocol == "dg"
    assert cls.HPARAMS["mmd_gamma"].default == 1.0


def test_dg_aligns_the_sources_and_msda_adds_the_target():
    generator = torch.Generator().manual_seed(0)
    x, y = coloured_images(12, 0, generator)
    twins = make_batch("msda", generator)
    twins.x, twins.y = torch.cat([x, x]), torch.cat([y, y])  # both sources hold the same images
    dg, msda = learner("coral", "dg"), learner("coral", "msda")
    msda.load_state_dict(dg.state_dict())
    assert dg(twins, stage="main", progress=0.0).terms["align"].item() < 1e-10  # the target is not a dg domain
    assert msda(twins, stage="main", progress=0.0).terms["align"].item() > 0.0


def test_the_loss_is_cross_entropy_plus_weighted_alignment():
    batch = make_batch("msda", torch.Generator().manual_seed(0))
    model = learner("coral", "msda", mmd_gamma=2.5)
    out = model(batch, stage="main", progress=0.0)
    torch.testing.assert_close(out.loss, out.terms["cls"] + 2.5 * out.terms["align"])


@pytest.mark.parametrize("protocol", ["dg", "msda"])
def test_coral_beats_chance_on_an_unseen_domain(protocol):
    beats_chance("coral", protocol)  # test_learners' check: 40 steps, target accuracy > 0.8 (chance 0.33)


def test_coral_under_dg_needs_two_source_domains():
    with pytest.raises(ConfigError, match="two source domains"):
        create_learner("coral", TinyNetwork(), LearnerContext(NUM_CLASSES, 1, "dg"), hparams("coral"))


# -- under the meta wrappers, unchanged -------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["dg", "msda"])
@pytest.mark.parametrize("meta", ["init", "critic", "init+critic"])
def test_coral_trains_under_every_meta_wrapper(protocol, meta):
    # test_meta_learners' check: finite logs, a non-zero meta-gradient, a critic that learns, a featurizer that moves
    every_pair_trains("coral", protocol, meta, {"critic_hidden": 16})
