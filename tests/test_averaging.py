"""Weight averaging, frozen levels / batch norm, the training resolution and the optimizer choice."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from dgmeta.data.augment import augment_batch
from dgmeta.errors import ConfigError
from dgmeta.models.freezing import batchnorm_eval, freeze_early_levels, frozen_prefix
from dgmeta.training.averaging import EMA, SWAD, create_averager, recompute_batchnorm
from dgmeta.training.stepper import make_optimizer


def _scalar_module(value: float) -> nn.Module:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_ema_is_the_warmed_up_exponential_average_of_the_snapshots():
    ema, values = EMA(0.9), [1.0, 5.0, -2.0, 4.0, 0.5]
    expected = None
    for t, v in enumerate(values):
        ema.update(_scalar_module(v), t + 1)
        if expected is None:
            expected = v
        else:
            d = min(0.9, (1 + t) / (10 + t))  # t earlier updates
            expected = d * expected + (1 - d) * v
    got = ema.averaged_state(_scalar_module(0.0))["weight"].item()
    assert got == pytest.approx(expected, rel=1e-6)


def _swad_run(losses, steps_per_eval=2, **kw):
    """Weights equal the step number; an evaluation every ``steps_per_eval`` steps with the given loss."""
    swad, step = SWAD(**kw), 0
    for loss in losses:
        for _ in range(steps_per_eval):
            step += 1
            swad.update(_scalar_module(float(step)), step)
        swad.observe(step, loss)
    return swad


def test_swad_averages_exactly_the_steps_of_the_low_loss_region():
    # evaluations at steps 2,4,...,20; the loss bottoms out at step 6 (the first of three with it
    # lowest), stays within 1.3x of the minimum until step 12, then rises for good
    losses = [5.0, 4.0, 2.0, 2.2, 2.1, 2.4, 9.0, 9.0, 9.0, 9.0]
    swad = _swad_run(losses, converge=3, tolerance=3, tolerance_ratio=0.3)
    assert swad.start_step == 6 and swad.end_step == 12 and swad.ended
    averaged = swad.averaged_state(_scalar_module(0.0))["weight"].item()
    assert averaged == pytest.approx(sum(range(7, 13)) / 6)  # steps 7..12, densely
    assert swad.averaged_steps() == 6


def test_swad_without_convergence_averages_the_tail():
    swad = _swad_run([5.0, 4.0, 3.0, 2.0, 1.0], converge=3, tolerance=3)
    assert not swad.started
    averaged = swad.averaged_state(_scalar_module(0.0))["weight"].item()
    assert averaged == pytest.approx(sum(range(5, 11)) / 6)  # the last three evaluations' steps


def test_swad_state_round_trips_and_continues_identically():
    losses = [5.0, 4.0, 2.0, 2.2, 2.1, 2.4, 9.0]
    full = _swad_run(losses, converge=3, tolerance=3)
    part = _swad_run(losses[:4], converge=3, tolerance=3)
    resumed = SWAD(converge=3, tolerance=3)
    resumed.load_state_dict(part.state_dict())
    step = 8
    for loss in losses[4:]:
        for _ in range(2):
            step += 1
            resumed.update(_scalar_module(float(step)), step)
        resumed.observe(step, loss)
    ref = _scalar_module(0.0)
    assert resumed.averaged_state(ref)["weight"].item() == pytest.approx(full.averaged_state(ref)["weight"].item())


def test_averager_names_and_bad_values_are_one_line_errors():
    with pytest.raises(ConfigError):
        create_averager("swa", {})
    with pytest.raises(ConfigError):
        EMA(1.5)
    with pytest.raises(ConfigError):
        SWAD(converge=0)


def test_recomputed_batchnorm_statistics_are_those_of_the_batches():
    bn = nn.BatchNorm2d(3)
    data = [torch.randn(8, 3, 4, 4) * 3 + 2 for _ in range(4)]
    recompute_batchnorm(bn, iter(data), bn)
    stacked = torch.cat(data)
    assert torch.allclose(bn.running_mean, stacked.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1


def test_frozen_levels_do_not_change_and_the_rest_trains():
    body = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    frozen = set(freeze_early_levels(body, 2))
    assert frozen == set(frozen_prefix(body, 2)) and any(n.startswith("layer1.") for n in frozen)
    assert not any(n.startswith("layer2.") for n in frozen)
    before = {n: p.detach().clone() for n, p in body.named_parameters()}
    head = nn.Linear(body.num_features, 2)
    opt = make_optimizer("adam", [{"params": [p for p in list(body.parameters()) + list(head.parameters()) if p.requires_grad]}], 1e-2, {"weight_decay": 0.0})
    body.train()
    batchnorm_eval(body)
    stats_before = {n: b.clone() for n, b in body.named_buffers()}
    for _ in range(3):
        loss = nn.functional.cross_entropy(head(body(torch.rand(4, 3, 32, 32))), torch.tensor([0, 1, 0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in body.named_parameters():
        changed = not torch.equal(p.detach(), before[n])
        assert changed == (n not in frozen), n
    for n, b in body.named_buffers():  # frozen batch norm: ImageNet statistics kept
        assert torch.equal(b, stats_before[n]), n


def test_freezing_everything_is_refused():
    body = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    with pytest.raises(ConfigError):
        freeze_early_levels(body, 5)


def test_training_batches_have_the_training_resolution():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64)
    assert augment_batch(x, g, size=48).shape == (4, 3, 48, 48)
    assert augment_batch(x, g).shape == (4, 3, 64, 64)


def test_optimizer_choice():
    params = [nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer("adam", [{"params": params}], 1e-3, {"weight_decay": 0.0}), torch.optim.AdamW)
    assert isinstance(make_optimizer("sgd", [{"params": params}], 1e-3, {"momentum": 0.9, "weight_decay": 0.0}), torch.optim.SGD)
    with pytest.raises(ConfigError):
        make_optimizer("lion", [{"params": params}], 1e-3, {})
