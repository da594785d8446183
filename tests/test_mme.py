"""MME (dgmeta/learners/mme.py): the cosine classifier, the entropy minimax signs by finite
differences, the protocols, the saved head, and MetaDA / Feature-Critic around it unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgmeta.errors import ConfigError
from dgmeta.hparams import apply_overrides, default_hparams
from dgmeta.learners.base import Batch, LearnerContext
from dgmeta.learners.registry import create_learner, learner_names
from dgmeta.losses import prediction_entropy
from dgmeta.meta import create_stepper
from test_meta_fixtures import single_thread  # noqa: F401  (autouse)
from test_meta_fixtures import DTYPE, TinyNet, blobs

S = 3
LAMBDA = 0.3


def mme(protocol: str = "ssda", seed: int = 0, **hp):
    torch.manual_seed(seed)
    network = TinyNet().to(DTYPE)
    context = LearnerContext(num_classes=3, num_domains=S + (protocol == "ssda"), protocol=protocol, total_steps=10)
    hparams = apply_overrides(default_hparams("mme"), {"mme_lambda": LAMBDA, "mme_temperature": 0.5, **hp})
    return create_learner("mme", network, context, hparams).to(DTYPE)


def da_batch(seed: int = 0, protocol: str = "ssda") -> Batch:
    batch = blobs(S + (protocol == "ssda"), 4, seed=seed)
    return batch.with_target(blobs(1, 8, seed=seed + 1, first_domain=S, shift=1.5).x)


def finite_difference(learner, fn, name: str, eps: float = 1e-6) -> torch.Tensor:
    param = dict(learner.named_parameters())[name]
    out = torch.zeros_like(param)
    with torch.no_grad():
        for i in range(param.numel()):
            flat = param.view(-1)
            flat[i] += eps
            up = float(fn())
            flat[i] -= 2 * eps
            down = float(fn())
            flat[i] += eps
            out.view(-1)[i] = (up - down) / (2 * eps)
    return out


def test_cosine_classifier_is_a_scaled_cosine_similarity():
    learner = mme()
    head = learner.classifier
    f = torch.randn(6, learner.feature_dim, dtype=DTYPE)
    expected = torch.stack([torch.stack([F.cosine_similarity(fi, wk, dim=0) for wk in head.weight]) for fi in f]) / 0.5
    assert torch.allclose(head(f), expected, rtol=1e-10)
    assert torch.allclose(head(3.7 * f), head(f))  # the feature norm does not change the logits


def test_entropy_minimax_signs_by_finite_differences():
    """Autograd through the GRL equals: classifier d(CE - lambda H), featurizer d(CE + lambda H),
    i.e. the classifier's descent step ascends the target entropy and the featurizer's descends it."""
    learner = mme()
    learner.train()
    batch = da_batch()
    objective = learner(batch, stage="main", progress=0.0)
    names = [n for n, _ in learner.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(objective.loss, list(learner.parameters()))))

    ce = lambda: F.cross_entropy(learner.predict(batch.x), batch.y)  # noqa: E731
    entropy = lambda: prediction_entropy(learner.predict(batch.target_x))  # noqa: E731 (no GRL: the plain entropy)
    assert float(objective.terms["entropy"]) == pytest.approx(float(entropy().detach()))
    for name in names:
        d_ce, d_h = finite_difference(learner, ce, name), finite_difference(learner, entropy, name)
        sign = -1.0 if name.startswith("classifier") else 1.0
        assert torch.allclose(grads[name], d_ce + sign * LAMBDA * d_h, rtol=1e-5, atol=1e-8), name
        assert d_h.norm() > 1e-4, name  # the entropy really depends on this parameter

    # the direction each side moves along: a small descent step on the entropy part alone
    for side, should in (("classifier", "up"), ("featurizer", "down")):
        before = float(entropy().detach())
        with torch.no_grad():
            for name, p in learner.named_parameters():
                if name.startswith(side):
                    d_ce = finite_difference(learner, ce, name)
                    p -= 1e-3 * (grads[name] - d_ce)  # the entropy part of the gradient only
        after = float(entropy().detach())
        assert (after > before) if should == "up" else (after < before), side
        learner = mme()  # fresh parameters for the other side


def test_protocols_and_registration():
    assert "mme" in learner_names()
    mme("ssda")
    mme("msda")
    with pytest.raises(ConfigError):
        mme("dg")
    with pytest.raises(ConfigError):
        mme(mme_temperature=0.0)
    assert default_hparams("mme")["mme_lambda"] == 0.1 and default_hparams("mme")["mme_temperature"] == 0.05


def test_exported_head_predicts_the_same_classes():
    learner = mme()
    x = blobs(S, 8, seed=3).x
    with torch.no_grad():
        features = learner.featurizer(x)
        exported = learner.export_classifier()
        assert isinstance(exported, torch.nn.Linear)
        assert torch.equal(exported(features).argmax(1), learner.predict(x).argmax(1))


@pytest.mark.parametrize("meta,overrides", [("init", {}), ("init", {"meta_episode": "target_shots"}), ("critic", {"critic_hidden": 8})])
def test_meta_wrappers_run_around_mme_unchanged(meta, overrides):
    hp = apply_overrides(default_hparams("mme", meta), {"optimizer": "sgd", "lr": 0.05, "freeze_bn": False, **overrides})
    learner = mme(**{k: v for k, v in hp.items() if k.startswith("mme_")})
    stepper = create_stepper(meta, learner, hp, 10, S, seed=0)
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    for step in range(3):
        logs = stepper.step(da_batch(seed=step))
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert "entropy" in logs and any(not torch.equal(p, before[n]) for n, p in learner.named_parameters())
