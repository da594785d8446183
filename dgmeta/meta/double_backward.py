"""Convolutions and batch norm whose *second* derivative is fast.

The exact meta-gradient (``meta_order=2``) and the Feature-Critic update differentiate a backward
pass, and three of PyTorch's double backwards are slow on CPU:

* a convolution with ``groups > 1`` (``aten::_convolution_double_backward``) computes one term
  group by group: a depthwise layer with 1152 channels becomes 1152 tiny convolutions;
* batch norm in training mode (``batchnorm_double_backward``) is a generic composite of many
  full-size products and reductions per layer, and its first backward, when a graph is kept,
  is a composite too instead of the fused kernel;
* a 1x1 convolution's double backward convolves transposed copies of the activations.

On EfficientNet-Lite0 the first two took 48% and 29% of a second-order meta-gradient's CPU time
(9,187 convolution calls for one meta-gradient; ``benchmarks/speed/double_backward_profile.py``).

:class:`fast_double_backward` is a context in which

* every grouped ``conv2d`` builds a :class:`GroupedConv2d` node, whose backward is two
  differentiable convolution calls with cheap derivatives of their own;
* every training-mode ``batch_norm`` builds a :class:`BatchNormBatchStats` node: forward and
  backward are PyTorch's fused kernels, and the backward's own backward
  (:class:`BatchNormBackward`) is written out by hand as three fused reductions and a few
  multiply-adds;
* every 1x1, stride-1 convolution of a channels-last activation is the matrix product it is
  (:func:`pointwise_conv_as_linear`).

Forward values are PyTorch's; gradients of first and second order equal PyTorch's (tests compare
them in float64); only the graph is cheaper to differentiate. Outside the context nothing
changes, and first-order training never enters it. Only CPU tensors are substituted: the gain
was measured on CPU kernels, and on CUDA (cuDNN's kernels, no such measurement yet) the context
leaves every operation to PyTorch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
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

    Forward and backward are PyTorch's fused kernels (``native_batch_norm`` and its backward); the
    backward runs as :class:`BatchNormBackward`, whose own backward is written out by hand.
    """

    @staticmethod
    def forward(ctx, x: Tensor, running_mean, running_var, weight, bias, momentum: float, eps: float) -> Tensor:
        out, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = BatchNormBackward.apply(grad, x, weight, mean, invstd, ctx.eps)
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            None,
            None,
            grad_weight if weight is not None and ctx.needs_input_grad[3] else None,
            grad_bias if ctx.has_bias and ctx.needs_input_grad[4] else None,
            None,
            None,
        )


class BatchNormBackward(torch.autograd.Function):
    """The backward of training-mode batch norm as a function of (upstream gradient, input, weight).

    With ``xhat = (x - mean) * invstd`` and means over all axes but the channel axis::

        grad_bias   = sum(g)
        grad_weight = sum(g * xhat)
        grad_x      = w * invstd * (g - mean(g) - xhat * mean(g * xhat))

    Its backward (the second derivative of batch norm; ``mean`` and ``invstd`` are functions of
    ``x``, which the formulas below account for) takes cotangents ``gg_x, gg_w, gg_b`` of the three
    outputs. Every term is a per-channel coefficient times one of ``gg_x``, ``g``, ``xhat``, so the
    whole backward is three reductions and a few fused multiply-adds over the activation::

        M1 = mean(gg_x), M2 = mean(gg_x * xhat), M3 = mean(gg_x * g), G = mean(g), Gx = mean(g * xhat)
        d g = w s (gg_x - M1 - xhat M2) + gg_w xhat + gg_b                        (s = invstd)
        d w = s n (M3 - G M1 - Gx M2)
        d x = s P(a) - s^2 w (M3 - G M1 - Gx M2) xhat,   a = gg_w g - w s (Gx gg_x + M2 g),
              P(a) = a - mean(a) - xhat mean(a xhat)

    (``P`` is the projection the forward's normalisation differentiates to; ``mean(a)`` and
    ``mean(a xhat)`` follow from M1, M2, G, Gx without another pass.) Not differentiable again:
    exact meta-gradients differentiate each graph node at most twice.
    """

    @staticmethod
    def forward(ctx, grad: Tensor, x: Tensor, weight, mean: Tensor, invstd: Tensor, eps: float):
        grad = grad.contiguous(memory_format=_memory_format(x))
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(grad, x, weight, mean, invstd, grad_weight, grad_bias)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return grad_x, grad_weight, grad_bias

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_x: Tensor | None, gg_weight: Tensor | None, gg_bias: Tensor | None):
        g, x, weight, mean, invstd, sum_g_xhat, sum_g = ctx.saved_tensors
        channels = x.shape[1]
        n = x.numel() // channels
        # per-channel coefficients in float32 at least, as PyTorch's kernels accumulate (bf16 autocast)
        compute = torch.promote_types(x.dtype, torch.float32)

        def per_channel(v: Tensor | None) -> Tensor:
            if v is None:
                return torch.zeros((), dtype=compute)
            return v.to(compute).view(1, channels, *([1] * (x.dim() - 2)))

        s, mu = per_channel(invstd), per_channel(mean)
        w = per_channel(weight) if weight is not None else torch.ones((), dtype=compute)
        G, Gx = per_channel(sum_g) / n, per_channel(sum_g_xhat) / n
        gg_w, gg_b = per_channel(gg_weight), per_channel(gg_bias)
        projected = None
        if gg_x is None:
            M1 = M2 = M3 = torch.zeros((), dtype=compute)
        else:
            # the reductions by PyTorch's fused batch-norm backward: called on gg_x it returns
            # w s P(gg_x), sum(gg_x xhat) and sum(gg_x); with mean 0 and invstd 1, sum(gg_x g)
            gg_x = gg_x.contiguous(memory_format=_memory_format(x))
            projected, sum_ggx_xhat, sum_ggx = torch.ops.aten.native_batch_norm_backward(
                gg_x, x, weight, None, None, mean, invstd, True, ctx.eps, [ctx.needs_input_grad[0], True, True]
            )
            zeros, ones = torch.zeros_like(mean), torch.ones_like(invstd)
            sum_ggx_g = torch.ops.aten.native_batch_norm_backward(
                gg_x, g, None, None, None, zeros, ones, True, ctx.eps, [False, True, False]
            )[1]
            M1, M2, M3 = per_channel(sum_ggx) / n, per_channel(sum_ggx_xhat) / n, per_channel(sum_ggx_g) / n
        ws = w * s
        curvature = M3 - G * M1 - Gx * M2  # mean(gg_x * (g - G - xhat Gx))

        # terms in xhat are written in x (xhat = s x - s mu) so that xhat is never materialised
        grad_g = grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_g = torch.addcmul(gg_b - s * mu * gg_w, x, s * gg_w)
            if projected is not None:
                grad_g.add_(projected)
            grad_g = grad_g.to(g.dtype)
        if ctx.needs_input_grad[1]:
            coef_g = gg_w - ws * M2  # a = coef_g * g + coef_ggx * gg_x
            coef_ggx = -ws * Gx
            mean_a = coef_g * G + coef_ggx * M1
            coef_xhat = -s * (coef_g * Gx + coef_ggx * M2) - s * s * w * curvature
            grad_x = torch.addcmul(-s * mean_a - coef_xhat * s * mu, g, s * coef_g)
            if gg_x is not None:
                grad_x.addcmul_(gg_x, s * coef_ggx)
            grad_x = grad_x.addcmul_(x, coef_xhat * s).to(x.dtype)
        if weight is not None and ctx.needs_input_grad[2]:
            grad_w = (s * n * curvature).flatten().to(weight.dtype)
        return grad_g, grad_x, grad_w, None, None, None


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def pointwise_conv_as_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 convolution of a channels-last ``x`` as a matrix product over its channel axis: the
    same values, and a double backward of plain matrix products instead of convolutions over
    transposed, copied activations."""
    out = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)
    return out.permute(0, 3, 1, 2)


def _is_pointwise(call: dict) -> bool:
    x, weight = call["input"], call["weight"]
    return (
        x.dim() == 4
        and weight.shape[2:] == (1, 1)
        and call["groups"] == 1
        and _pair(call["stride"]) == (1, 1)
        and not isinstance(call["padding"], str)
        and _pair(call["padding"]) == (0, 0)
        and x.is_contiguous(memory_format=torch.channels_last)
    )


_CONV2D_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV2D_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_BATCH_NORM_DEFAULTS = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}


class fast_double_backward(TorchFunctionMode):
    """Context: grouped and 1x1 ``conv2d`` and training ``batch_norm`` get a fast second derivative (see the module)."""

    def __torch_function__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            call = {**_CONV2D_DEFAULTS, **dict(zip(_CONV2D_ARGS, args)), **kwargs}
            x, weight = call["input"], call["weight"]
            # CPU only: the gain was measured on CPU kernels; CUDA tensors take PyTorch's own path
            differentiable = x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
            if differentiable and _is_pointwise(call):
                return pointwise_conv_as_linear(x, weight, call["bias"])
            if (
                differentiable
                and call["groups"] > 1
                and not isinstance(call["padding"], str)  # "same"/"valid": left to PyTorch
                and x.dim() == 4
            ):
                return GroupedConv2d.apply(
                    x, weight, call["bias"], _pair(call["stride"]), _pair(call["padding"]), _pair(call["dilation"]), call["groups"]
                )
        elif func is F.batch_norm:
            call = {**_BATCH_NORM_DEFAULTS, **dict(zip(_BATCH_NORM_ARGS, args)), **kwargs}
            x = call["input"]
            if call["training"] and x.dim() >= 2 and x.device.type == "cpu" and torch.is_grad_enabled() and x.requires_grad:
                return BatchNormBatchStats.apply(
                    x, call["running_mean"], call["running_var"], call["weight"], call["bias"], call["momentum"], call["eps"]
                )
        return func(*args, **kwargs)
