"""dgmeta.meta.double_backward: same values and gradients of every order as PyTorch's own ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dgmeta.meta.double_backward import BatchNormBatchStats, GroupedConv2d, fast_double_backward


def first_and_second_order(model: nn.Module, x: torch.Tensor, fast: bool) -> list[torch.Tensor]:
    """Gradients of a loss and of the squared norm of its gradient (what MAML's exact order differentiates)."""
    params = [x, *model.parameters()]
    with fast_double_backward() if fast else torch.enable_grad():
        out = model(x)
    loss = (out.tanh() * torch.linspace(-1, 2, out.shape[-1], dtype=out.dtype)).sum()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in grads), params)
    return [g.detach() for g in grads] + list(second)


def node_types(model: nn.Module, x: torch.Tensor) -> set[str]:
    with fast_double_backward():
        out = model(x)
    seen, stack, names = set(), [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


CONVS = {
    "depthwise 3x3 stride 2": dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding=1, groups=6, bias=False),
    "depthwise 5x5 dilated": dict(in_channels=4, out_channels=4, kernel_size=5, padding=4, dilation=2, groups=4, bias=True),
    "two groups, asymmetric": dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(0, 1), groups=2, bias=True),
}


@pytest.mark.parametrize("spec", CONVS.values(), ids=list(CONVS))
def test_grouped_conv_gradients_of_every_order_match_pytorch(spec):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(**spec), nn.Softplus()).double()
    x = torch.randn(3, spec["in_channels"], 9, 8, dtype=torch.float64, requires_grad=True)
    for stock, fast in zip(first_and_second_order(model, x, False), first_and_second_order(model, x, True)):
        torch.testing.assert_close(fast, stock, rtol=1e-10, atol=1e-12)
    assert "GroupedConv2dBackward" in node_types(model, x)


NORM_OPTIONS = {"affine": dict(affine=True), "no affine": dict(affine=False), "no running stats": dict(track_running_stats=False),
                "cumulative average": dict(momentum=None)}


@pytest.mark.parametrize("options", NORM_OPTIONS.values(), ids=list(NORM_OPTIONS))
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 3)], ids=["2d", "1d"])
def test_batch_norm_gradients_of_every_order_and_running_stats_match_pytorch(options, shape):
    torch.manual_seed(0)
    affine = options.get("affine", True)
    norm = nn.BatchNorm2d(3, **options) if len(shape) == 4 else nn.BatchNorm1d(3, **options)
    model = nn.Sequential(nn.Linear(shape[-1], shape[-1]), norm, nn.Softplus()).double()
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0), norm.bias.uniform_(-1, 1)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True) * 3 + 1
    stock = first_and_second_order(model, x, False)
    stats_stock = [t.clone() for t in norm.buffers()]
    norm.reset_running_stats()
    fast = first_and_second_order(model, x, True)
    for a, b in zip(stock, fast):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)
    assert len(stats_stock) == (3 if norm.track_running_stats else 0)
    torch.testing.assert_close(list(norm.buffers()), stats_stock)
    assert "BatchNormBatchStatsBackward" in node_types(model, x)


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_runs_as_a_matrix_product_with_pytorchs_gradients_of_every_order(bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(5, 7, 1, bias=bias), nn.Softplus()).double()
    x = torch.randn(3, 5, 6, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    for stock, fast in zip(first_and_second_order(model, x, False), first_and_second_order(model, x, True)):
        torch.testing.assert_close(fast, stock, rtol=1e-10, atol=1e-12)
    with fast_double_backward():
        out = model[0](x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.conv2d(x, model[0].weight, model[0].bias), rtol=1e-12, atol=1e-12)
    assert "ConvolutionBackward0" not in node_types(model, x)
    # not channels-last, strided or padded: PyTorch's convolution
    assert "ConvolutionBackward0" in node_types(model, x.detach().contiguous().requires_grad_())
    strided = nn.Sequential(nn.Conv2d(5, 7, 1, stride=2)).double()
    assert "ConvolutionBackward0" in node_types(strided, x)


def test_under_bf16_autocast_second_order_is_no_less_accurate_than_pytorchs():
    """Statistics and per-channel coefficients stay in float32 under autocast, as PyTorch keeps them."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 10, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    exact = first_and_second_order(model, x, False)  # float32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stock = first_and_second_order(model, x, False)
        fast = first_and_second_order(model, x, True)
    for reference, s, f in zip(exact, stock, fast):
        assert f.dtype == s.dtype
        assert (f - reference).norm() <= 2 * (s - reference).norm() + 1e-3 * reference.norm()


def test_left_alone_outside_training_without_gradients_and_for_plain_convs():
    torch.manual_seed(0)
    conv, grouped = nn.Conv2d(4, 4, 3).double(), nn.Conv2d(4, 4, 3, groups=4).double()
    norm = nn.BatchNorm2d(4).double().eval()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    assert not {"GroupedConv2dBackward", "BatchNormBatchStatsBackward"} & node_types(nn.Sequential(conv, norm), x)
    assert "ConvolutionBackward0" in node_types(conv, x)
    with fast_double_backward(), torch.no_grad():
        assert torch.equal(grouped(x), F.conv2d(x, grouped.weight, grouped.bias, groups=4))
    assert issubclass(GroupedConv2d, torch.autograd.Function) and issubclass(BatchNormBatchStats, torch.autograd.Function)


def test_second_order_meta_step_is_cheaper_in_graph_nodes_than_pytorchs():
    """The point of the module: the differentiated graph of a depthwise block has no per-group work."""
    torch.manual_seed(0)
    channels = 32
    block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
    x = torch.randn(2, channels, 6, 6, requires_grad=True)

    def convolutions_in_double_backward(fast: bool) -> int:
        from torch.profiler import ProfilerActivity, profile

        with fast_double_backward() if fast else torch.enable_grad():
            out = block(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *block.parameters()], create_graph=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            torch.autograd.grad(sum(g.square().sum() for g in grads), [x, *block.parameters()])
        return sum(e.count for e in prof.key_averages() if e.key in ("aten::convolution", "aten::_convolution"))

    assert convolutions_in_double_backward(False) >= channels  # one per group
    assert convolutions_in_double_backward(True) <= 8  # a fixed few, whatever the channel count
