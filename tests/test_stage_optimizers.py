"""One optimizer per module, shared by every stage that trains it (MCD's three stages under Adam)."""

from __future__ import annotations

import pytest
import torch

from dgmeta.errors import TrainingError
from dgmeta.hparams import default_hparams
from dgmeta.learners import Batch, LearnerContext, create_learner
from dgmeta.models import create_network
from dgmeta.training.stepper import StageStepper


def _mcd(optimizer: str = "adam"):
    torch.manual_seed(0)
    hparams = {**default_hparams("mcd"), "optimizer": optimizer, "num_k": 2}
    learner = create_learner("mcd", create_network("test_resnet", 3, "none"), LearnerContext(3, 2, "msda", 10), hparams)
    return learner, StageStepper(learner, hparams, 10)


def _batch():
    g = torch.Generator().manual_seed(0)
    return Batch(torch.rand(6, 3, 24, 24, generator=g), torch.randint(0, 3, (6,), generator=g),
                 torch.tensor([0, 0, 0, 1, 1, 1]), target_x=torch.rand(6, 3, 24, 24, generator=g))


def test_mcd_stages_share_one_optimizer_per_module():
    learner, stepper = _mcd()
    assert set(stepper.optimizers) == {"featurizer", "classifier", "classifier2"}
    a, b, c = learner.stages()
    assert stepper.stage_optimizers(b) == [stepper.optimizers["classifier"], stepper.optimizers["classifier2"]]
    assert stepper.stage_optimizers(c) == [stepper.optimizers["featurizer"]]
    stepper.step(_batch())

    def steps_taken(module: str) -> int:
        states = stepper.optimizers[module].state.values()
        return {int(s["step"]) for s in states}.pop()

    # stage A trains all three, B the two classifiers, C the featurizer num_k = 2 times
    assert steps_taken("classifier") == 2 and steps_taken("classifier2") == 2
    assert steps_taken("featurizer") == 3


def test_a_checkpoint_with_other_optimizers_is_refused_with_a_hint():
    _, stepper = _mcd()
    state = stepper.state_dict()
    state["optimizers"] = {"A": state["optimizers"]["featurizer"]}  # the per-stage layout of older runs
    with pytest.raises(TrainingError, match="--resume never"):
        stepper.load_state_dict(state)
