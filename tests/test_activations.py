"""dgmeta.models.activations: ReLU6 that saves its output, not a copy of its input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgmeta.models.activations import ReLU6SavingOutput, use_output_saving_relu6
from dgmeta.models.network import create_featurizer


def conv_bn_relu6_stack(inplace: bool) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=inplace),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=inplace),
        nn.Conv2d(8, 8, 1, bias=False),  # like every ReLU6 in EfficientNet-Lite: a convolution keeps its output
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).double()
    for bn in (model[1], model[4]):  # spread the normalised values past both kinks, 0 and 6
        nn.init.constant_(bn.weight, 4.0)
        nn.init.constant_(bn.bias, 1.0)
    return model


def lean_copy(model: nn.Module) -> nn.Module:
    twin = conv_bn_relu6_stack(model[2].inplace)
    twin.load_state_dict(model.state_dict())
    assert use_output_saving_relu6(twin) == 2
    return twin


def gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, second_order: bool) -> list[torch.Tensor]:
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=second_order)
    if not second_order:
        return list(grads)
    return list(torch.autograd.grad(sum((g * g).sum() for g in grads), params))


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("second_order", [False, True])
def test_same_gradients_as_relu6_to_first_and_second_order(inplace, second_order):
    stock = conv_bn_relu6_stack(inplace)
    lean = lean_copy(stock)
    x, y = torch.randn(6, 3, 10, 10, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        pre = stock[1](stock[0](x))
    assert (pre > 6).any() and (pre < 0).any() and ((pre > 0) & (pre < 6)).any()
    for a, b in zip(gradients(stock, x, y, second_order), gradients(lean, x, y, second_order)):
        assert torch.equal(a, b)
    assert sum(g.abs().sum() for g in gradients(lean, x, y, second_order)) > 0


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(storages.values())


def test_saves_one_activation_less_per_relu6():
    stock = conv_bn_relu6_stack(inplace=True)
    lean = lean_copy(stock)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    activation = 4 * 8 * 16 * 16 * 8  # one (batch, 8, 16, 16) float64 tensor, bytes
    assert saved_bytes(stock, x) - saved_bytes(lean, x) == 2 * activation


def test_same_values_without_gradients_and_in_eval():
    act = ReLU6SavingOutput(inplace=False)
    x = torch.linspace(-3, 9, 25)
    assert torch.equal(act(x), nn.ReLU6()(x))
    with torch.no_grad():
        assert torch.equal(act(x.clone().requires_grad_()), nn.ReLU6()(x))


def test_featurizers_use_it():
    featurizer = create_featurizer("tf_efficientnet_lite0", weights="none")
    kinds = {type(m) for m in featurizer.modules()}
    assert ReLU6SavingOutput in kinds and nn.ReLU6 not in kinds
