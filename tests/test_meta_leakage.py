"""The meta level never uses target-domain data for meta-train or meta-test.

Target-domain samples (the unlabelled ``target_x`` and, under ``ssda``, the labelled shots with
domain index S) carry a sentinel value in their last input dimension. A sentinel learner raises
as soon as a marked sample, or domain index S, reaches anything other than the real training
batch the stepper was given: a meta-train objective, a meta-test prediction, the critic's
meta-train features.
"""

from __future__ import annotations

import pytest
import torch

from dgmeta.hparams import apply_overrides, default_hparams
from dgmeta.learners.base import Batch, LearnerContext
from dgmeta.meta import create_stepper
from dgmeta.meta.episodes import split_batch
from dgmeta.meta.gradient import meta_gradient
from test_meta_fixtures import single_thread  # noqa: F401  (autouse)
from test_meta_fixtures import DTYPE, TinyNet, TwoHeads, blobs

S = 3
MARK = 777.0


class TargetLeak(AssertionError):
    pass


class Sentinel(TwoHeads):
    name = "sentinel"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.training_batches: list[Batch] = []
        self.meta_inputs_checked = 0

    def _is_training_batch(self, batch: Batch) -> bool:
        return any(batch is b for b in self.training_batches)

    def _require_clean(self, x: torch.Tensor, where: str) -> None:
        if bool((x[:, -1] == MARK).any()):
            raise TargetLeak(f"a target-domain sample reached {where}")
        self.meta_inputs_checked += 1

    def forward(self, inputs, stage=None, progress=0.0):
        if stage is None:  # during training only the meta level predicts directly: L_val
            self._require_clean(inputs, "a meta-test loss")
        elif not self._is_training_batch(inputs):
            self._require_clean(inputs.x, f"meta-train stage {stage}")
            if bool((inputs.domain >= S).any()):
                raise TargetLeak("target shots (domain index S) reached a meta-train objective")
            if inputs.target_x is not None:
                self._require_clean(inputs.target_x, "a meta-train adaptation target")
        return super().forward(inputs, stage, progress)

    def features(self, x):
        if not any(x is b.x for b in self.training_batches):  # the model's own critic term is allowed
            self._require_clean(x, "the critic's meta-train features")
        return super().features(x)


def make_sentinel(protocol: str) -> Sentinel:
    torch.manual_seed(0)
    network = TinyNet(in_dim=6).to(DTYPE)
    context = LearnerContext(num_classes=3, num_domains=S + (protocol == "ssda"), protocol=protocol, total_steps=10)
    return Sentinel(network, context, {}).to(DTYPE)


def marked(batch: Batch) -> torch.Tensor:
    return torch.cat([batch.x, torch.full((len(batch), 1), MARK, dtype=DTYPE)], 1)


def training_batch(protocol: str, seed: int) -> Batch:
    sources = blobs(S, 6, seed=seed)
    sources = Batch(torch.cat([sources.x, torch.randn(len(sources), 1, dtype=DTYPE)], 1), sources.y, sources.domain)
    target = blobs(1, 6, seed=seed + 100, first_domain=S)
    batch = sources.with_target(marked(target))
    if protocol == "ssda":
        shots = blobs(1, 3, seed=seed + 200, first_domain=S)
        batch = Batch(torch.cat([batch.x, marked(shots)]), torch.cat([batch.y, shots.y]), torch.cat([batch.domain, shots.domain]), batch.target_x)
    return batch


@pytest.mark.parametrize("protocol", ["msda", "ssda"])
@pytest.mark.parametrize(
    "meta,overrides",
    [
        ("init", {"meta_order": 1}),
        ("init", {"meta_order": 2, "inner_steps": 2}),
        ("init", {"meta_schedule": "offline", "offline_meta_steps": 2}),
        ("critic", {"critic_hidden": 8}),
        ("init+critic", {"critic_hidden": 8}),
    ],
)
def test_no_target_domain_sample_reaches_the_meta_level(protocol, meta, overrides):
    learner = make_sentinel(protocol)
    hp = apply_overrides(default_hparams("erm", meta), overrides)
    stepper = create_stepper(meta, learner, hp, 10, S, seed=0)
    for step in range(4):
        batch = training_batch(protocol, seed=step)
        learner.training_batches = [batch]
        logs = stepper.step(batch)
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert learner.meta_inputs_checked > 0  # the checks ran on real meta passes


def test_the_sentinel_catches_a_leaky_episode():
    """Negative control: put the target shots into meta-test by hand and the sentinel fires."""
    learner = make_sentinel("ssda")
    batch = training_batch("ssda", seed=0)
    learner.training_batches = [batch]
    meta_train, meta_test = split_batch(batch, [0, 1], [2, S])
    with pytest.raises(TargetLeak):
        meta_gradient(learner, meta_train, meta_test, 0.0, 0.1)
    clean_train, clean_test = split_batch(batch, [0, 1], [2])
    meta_gradient(learner, clean_train, clean_test, 0.0, 0.1)
    with pytest.raises(TargetLeak):  # the true unlabelled target as the inner loop's target
        meta_gradient(learner, clean_train.with_target(batch.target_x), clean_test, 0.0, 0.1)
