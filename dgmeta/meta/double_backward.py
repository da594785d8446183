"""Grouped convolutions and batch norm whose *second* derivative is fast.

The exact meta-gradient (``meta_order=2``) and the Feature-Critic update differentiate a backward
pass, and two of PyTorch's double backwards are slow on CPU:

* a convolution with ``groups > 1`` (``aten::_convolution_double_backward``) computes one term
  group by group: a depthwise layer with 1152 channels becomes 1152 tiny convolutions;
* batch norm in training mode (``batchnorm_double_backward``) is a generic composite of many
  full-size products and reductions per layer.

On EfficientNet-Lite0 the two took 40% and 30% of a second-order meta-gradient's CPU time (9,187
convolution calls for one meta-gradient; ``benchmarks/double_backward_profile.py``).

:class:`fast_double_backward` is a context in which every grouped ``conv2d`` and every
training-mode ``batch_norm`` builds a graph node whose backward is written with a few
differentiable operations that have cheap derivatives of their own (:class:`GroupedConv2d`,
:class:`BatchNormBatchStats`). Forward values are PyTorch's own kernels; gradients of every order
equal PyTorch's (tests compare them in float64); only the graph is cheaper to differentiate.
Outside the context nothing changes, and first-order training never enters it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode


class GroupedConv2d(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` with a cheap double backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conv
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # the transposed convolution can produce several input sizes; pick the one x had
            output_padding = [
                x.shape[2 + d] - ((grad.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.shape[2 + d] - 1) + 1)
                for d in range(2)
            ]
            grad_x = F.conv_transpose2d(grad, weight, None, stride, padding, output_padding, groups, dilation)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], groups, [False, True, False]
            )[1]
        if has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None, None


class BatchNormBatchStats(torch.autograd.Function):
    """Training-mode ``F.batch_norm`` (normalise with the batch's statistics, update the running ones).

    The backward recomputes the statistics from the saved input so that they stay functions of it
    (their dependence on the input is part of the second derivative), then applies the textbook
    formula ``dx = w * invstd * (g - mean(g) - xhat * mean(g * xhat))`` over all axes but the
    channel axis.
    """

    @staticmethod
    def forward(ctx, x: Tensor, running_mean, running_var, weight, bias, momentum: float, eps: float) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_saved, weight = ctx.saved_tensors
        # statistics in float32 at least, as PyTorch's kernels accumulate them (bf16 autocast)
        compute = torch.promote_types(x_saved.dtype, torch.float32)
        x, grad = x_saved.to(compute), grad.to(compute)
        axes = [0, *range(2, x.dim())]
        count = x.numel() // x.shape[1]
        centred = x - x.mean(axes, keepdim=True)
        invstd = (centred.square().mean(axes, keepdim=True) + ctx.eps).rsqrt()
        xhat = centred * invstd
        grad_bias = grad.sum(axes, keepdim=True)
        grad_weight = (grad * xhat).sum(axes, keepdim=True)
        scale = invstd if weight is None else invstd * weight.view(1, -1, *([1] * (x.dim() - 2)))
        grad_x = scale * (grad - grad_bias / count - xhat * (grad_weight / count)) if ctx.needs_input_grad[0] else None
        return (
            None if grad_x is None else grad_x.to(x_saved.dtype),
            None,
            None,
            grad_weight.flatten() if weight is not None and ctx.needs_input_grad[3] else None,
            grad_bias.flatten() if ctx.has_bias and ctx.needs_input_grad[4] else None,
            None,
            None,
        )


_CONV2D_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV2D_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_BATCH_NORM_DEFAULTS = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}


class fast_double_backward(TorchFunctionMode):
    """Context: grouped ``conv2d`` and training ``batch_norm`` get a fast second derivative (see the module)."""

    def __torch_function__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            call = {**_CONV2D_DEFAULTS, **dict(zip(_CONV2D_ARGS, args)), **kwargs}
            x, weight = call["input"], call["weight"]
            if (
                call["groups"] > 1
                and not isinstance(call["padding"], str)  # "same"/"valid": left to PyTorch
                and x.dim() == 4
                and torch.is_grad_enabled()
                and (x.requires_grad or weight.requires_grad)
            ):
                return GroupedConv2d.apply(
                    x, weight, call["bias"], _pair(call["stride"]), _pair(call["padding"]), _pair(call["dilation"]), call["groups"]
                )
        elif func is F.batch_norm:
            call = {**_BATCH_NORM_DEFAULTS, **dict(zip(_BATCH_NORM_ARGS, args)), **kwargs}
            x = call["input"]
            if call["training"] and x.dim() >= 2 and torch.is_grad_enabled() and x.requires_grad:
                return BatchNormBatchStats.apply(
                    x, call["running_mean"], call["running_var"], call["weight"], call["bias"], call["momentum"], call["eps"]
                )
        return func(*args, **kwargs)
