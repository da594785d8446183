"""The meta-gradient (dgmeta/meta/gradient.py) against independent references."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dgmeta.errors import ConfigError
from dgmeta.meta.episodes import split_batch
from dgmeta.meta.gradient import inner_adapt, meta_gradient, trainable_params
from test_meta_fixtures import single_thread  # noqa: F401  (autouse)
from test_meta_fixtures import blobs, make_learner

INNER_LR = 0.3
INNER_STEPS = 2


def reference_outer(learner, theta, batch_train, batch_test, inner_lr=INNER_LR, inner_steps=INNER_STEPS):
    """L_val after the inner loop, written the plain way: a model copy and one torch SGD per stage."""
    model = copy.deepcopy(learner)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(theta[name])
    model.train()
    for _ in range(inner_steps):
        for stage in model.stages():
            opt = torch.optim.SGD(model.stage_parameters(stage), lr=inner_lr)
            for _ in range(stage.repeat):
                model.zero_grad(set_to_none=True)
                model(batch_train, stage=stage.name, progress=0.25).loss.backward()
                opt.step()
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(batch_test.x), batch_test.y)
    loss.backward()
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}
    return loss.detach(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def episode(protocol="msda", seed=0, num_classes=3):
    batch = blobs(3, 6, seed=seed, num_classes=num_classes)
    if protocol != "dg":
        batch = batch.with_target(blobs(1, 6, seed=seed + 1, first_domain=3, num_classes=num_classes).x)
    return split_batch(batch, [0, 2], [1])


@pytest.mark.parametrize("batchnorm", [False, True])
def test_second_order_matches_finite_differences(batchnorm):
    learner = make_learner("two_heads", protocol="msda", batchnorm=batchnorm, feature_dim=3, num_classes=2)
    learner.train()
    train, test = episode(num_classes=2)
    result = meta_gradient(learner, train, test, 0.25, INNER_LR, INNER_STEPS, order=2)

    theta = {n: p.detach().clone() for n, p in trainable_params(learner).items()}
    eps = 1e-6
    numeric = {}
    for name, value in theta.items():
        flat = torch.zeros(value.numel(), dtype=value.dtype)
        for i in range(value.numel()):
            plus, minus = dict(theta), dict(theta)
            step = torch.zeros(value.numel(), dtype=value.dtype)
            step[i] = eps
            plus[name] = value + step.view_as(value)
            minus[name] = value - step.view_as(value)
            flat[i] = (reference_outer(learner, plus, train, test)[0] - reference_outer(learner, minus, train, test)[0]) / (2 * eps)
        numeric[name] = flat.view_as(value)

    exact = torch.cat([result.grads[n].flatten() for n in theta])
    fd = torch.cat([numeric[n].flatten() for n in theta])
    assert fd.norm() > 1e-3  # the outer loss really depends on the initial parameters
    assert float((exact - fd).norm() / fd.norm()) < 1e-3
    assert torch.allclose(result.val_loss, reference_outer(learner, theta, train, test)[0], rtol=1e-12)


def test_first_order_is_the_validation_gradient_at_the_adapted_point():
    learner = make_learner("two_heads", protocol="msda", batchnorm=True)
    learner.train()
    train, test = episode()
    first = meta_gradient(learner, train, test, 0.25, INNER_LR, INNER_STEPS, order=1)
    second = meta_gradient(learner, train, test, 0.25, INNER_LR, INNER_STEPS, order=2)
    theta = {n: p.detach().clone() for n, p in trainable_params(learner).items()}
    loss, grads_at_adapted, _ = reference_outer(learner, theta, train, test)

    assert torch.allclose(first.val_loss, loss, rtol=1e-12)
    for name in theta:
        assert torch.allclose(first.grads[name], grads_at_adapted[name], rtol=1e-10, atol=1e-14), name
    # the approximation is a real approximation here, so the check above can tell the orders apart
    gap = sum(float((first.grads[n] - second.grads[n]).norm()) for n in theta)
    assert gap > 1e-4


def test_inner_adapt_matches_per_stage_sgd_and_leaves_inputs_alone():
    learner = make_learner("two_heads", protocol="msda")
    train, _ = episode()
    theta = {n: p.detach().clone() for n, p in trainable_params(learner).items()}
    before = {n: v.clone() for n, v in theta.items()}
    adapted = inner_adapt(learner, theta, train, 0.25, INNER_LR, INNER_STEPS, create_graph=False)
    *_, reference = reference_outer(learner, theta, train, train)
    for name in theta:
        assert torch.allclose(adapted.params[name], reference[name], rtol=1e-12, atol=1e-14), name
        assert torch.equal(theta[name], before[name])
    # stage order and repeats: (A, B, C, C) per inner step
    assert [s for s, _ in adapted.losses] == ["A", "B", "C", "C"] * INNER_STEPS


def test_meta_episodes_do_not_touch_the_real_batchnorm_statistics_or_grads():
    learner = make_learner("erm", batchnorm=True)
    learner.train()
    train, test = episode("dg")
    buffers = {n: b.clone() for n, b in learner.named_buffers()}
    for order in (1, 2):
        meta_gradient(learner, train, test, 0.0, INNER_LR, 1, order=order)
    for name, value in learner.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert all(p.grad is None for p in learner.parameters())
    learner(train, stage="main").loss.backward()  # the real model's own passes still update them
    assert not torch.equal(dict(learner.named_buffers())["featurizer.1.running_mean"], buffers["featurizer.1.running_mean"])


def test_meta_gradient_descends_the_held_out_loss():
    learner = make_learner("erm")
    learner.train()
    train, test = episode("dg")
    theta = {n: p.detach().clone() for n, p in trainable_params(learner).items()}
    for order in (1, 2):
        g = meta_gradient(learner, train, test, 0.0, 0.1, 1, order=order).grads
        loss_here = reference_outer(learner, theta, train, test, 0.1, 1)[0]
        moved = {n: theta[n] - 0.05 * g[n] for n in theta}
        assert reference_outer(learner, moved, train, test, 0.1, 1)[0] < loss_here


def test_unknown_order_is_a_config_error():
    learner = make_learner("erm")
    train, test = episode("dg")
    with pytest.raises(ConfigError):
        meta_gradient(learner, train, test, 0.0, 0.1, 1, order=3)
