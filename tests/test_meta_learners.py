"""Every registered base learner runs under every meta mode, under every protocol it supports.

The meta wrappers only know the learner contract, so this is the test that the real learners
(DANN's gradient reversal, MCD's three stages, JiGen's jigsaw head) and the wrappers fit: a few
steps on tiny images, finite losses, a non-zero meta-gradient, a critic that learns.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgmeta.hparams import apply_overrides, default_hparams
from dgmeta.learners.base import Batch, LearnerContext
from dgmeta.learners.registry import LEARNERS, create_learner, learner_names
from dgmeta.meta import create_stepper
from dgmeta.meta.episodes import split_batch
from dgmeta.meta.gradient import meta_gradient
from dgmeta.models.network import create_network
from test_meta_fixtures import single_thread  # noqa: F401  (autouse)

S, CLASSES, SIZE, PER_DOMAIN = 3, 4, 24, 4
META_MODES = [
    ("init", {}),
    ("init", {"meta_order": 2}),
    ("init", {"meta_schedule": "offline", "offline_meta_steps": 1}),
    ("critic", {"critic_hidden": 16}),
    ("init+critic", {"critic_hidden": 16, "meta_order": 2}),
]
FAST = {"num_k": 2, "disc_hidden": 16, "num_permutations": 10}


class TinyConvNet(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.featurizer = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.classifier = nn.Linear(8, num_classes)
        self.feature_dim = 8


def pairs():
    for base in learner_names():
        for protocol in LEARNERS.get(base).protocols:
            for meta, overrides in META_MODES:
                yield pytest.param(base, protocol, meta, overrides, id=f"{base}-{protocol}-{meta}-{'-'.join(f'{k}{v}' for k, v in overrides.items())}")


def training_batch(protocol: str, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n = S * PER_DOMAIN
    batch = Batch(
        torch.rand(n, 3, SIZE, SIZE, generator=g),
        torch.randint(0, CLASSES, (n,), generator=g),
        torch.arange(S).repeat_interleave(PER_DOMAIN),
        None if protocol == "dg" else torch.rand(PER_DOMAIN, 3, SIZE, SIZE, generator=g),
    )
    if protocol == "ssda":
        shots = torch.rand(2, 3, SIZE, SIZE, generator=g)
        batch = Batch(
            torch.cat([batch.x, shots]), torch.cat([batch.y, torch.tensor([0, 1])]), torch.cat([batch.domain, torch.full((2,), S)]), batch.target_x
        )
    return batch


def build(base: str, protocol: str, meta: str, overrides: dict, network: nn.Module):
    hp = default_hparams(base, meta)
    hp = apply_overrides(hp, {k: v for k, v in {**FAST, **overrides}.items() if k in hp})
    context = LearnerContext(CLASSES, S + (protocol == "ssda"), protocol, total_steps=10)
    learner = create_learner(base, network, context, hp)
    return learner, create_stepper(meta, learner, hp, 10, S, seed=0)


def test_the_real_learners_are_registered():
    assert {"erm", "dann", "mcd", "jigen"} <= set(learner_names())


@pytest.mark.parametrize("base,protocol,meta,overrides", list(pairs()))
def test_every_base_meta_pair_trains(base, protocol, meta, overrides):
    torch.manual_seed(0)
    learner, stepper = build(base, protocol, meta, overrides, TinyConvNet(CLASSES))
    critic = stepper.term("critic").critic if "critic" in meta else None
    critic_before = None if critic is None else [p.detach().clone() for p in critic.parameters()]
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}

    all_logs = [stepper.step(training_batch(protocol, seed)) for seed in range(3)]
    for logs in all_logs:
        assert logs and all(torch.isfinite(torch.tensor(v)) for v in logs.values()), logs
    if "init" in meta:
        meta_logs = [logs for logs in all_logs if "meta/grad_norm" in logs]
        assert meta_logs and all(logs["meta/grad_norm"] > 0 for logs in meta_logs)
    if critic is not None:
        assert all("critic/meta_loss" in logs for logs in all_logs if "loss" in logs)
        assert any(not torch.equal(p, q) for p, q in zip(critic.parameters(), critic_before))
    for name in ("featurizer.0.weight", "classifier.weight"):
        assert not torch.equal(dict(learner.named_parameters())[name], before[name]), name
    assert stepper.step_count == 3 - int(overrides.get("offline_meta_steps", 0))


@pytest.mark.parametrize("base,protocol", [("dann", "msda"), ("mcd", "ssda"), ("jigen", "dg")])
def test_second_order_meta_gradient_reaches_every_module_of_a_timm_backbone(base, protocol):
    """The exact meta-gradient through a real timm network (channels-last, batch norm)."""
    torch.manual_seed(0)
    network = create_network("test_resnet", CLASSES, "none")
    learner, _ = build(base, protocol, "init", {"meta_order": 2}, network)
    learner.train()
    batch = training_batch(protocol, seed=0)
    train, test = split_batch(batch, [0, 2], [1])
    result = meta_gradient(learner, train, test, 0.5, 0.01, 1, order=2)
    assert torch.isfinite(result.val_loss)
    for child, _ in learner.named_children():
        norm = sum(float(g.norm()) for n, g in result.grads.items() if n.startswith(child + "."))
        # every module that shapes the inner step or the prediction gets a meta-gradient
        assert norm > 0, child
