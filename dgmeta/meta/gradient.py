"""The meta-gradient: how the loss on a held-out source domain changes with the parameters one
adapts *from* (MAML / MLDG / MetaDA). Everything functional, for any learner unchanged.

Notation: theta = all trainable parameters of the learner, ``batch_train`` = the meta-train
episode half (its ``target_x`` = the meta-test images under ``msda``/``ssda``), ``batch_test`` = the
meta-test half (labelled, never the target domain).

Inner loop, ``theta' = inner_adapt(theta)``: ``inner_steps`` times, run every stage of the learner
in its declared order, each ``repeat`` times, and update only that stage's own parameters with one
plain SGD step (no momentum or weight decay, one step size ``inner_lr`` for all parameters)::

    theta_S <- theta_S - inner_lr * d L_S(theta; batch_train, progress) / d theta_S

so ERM/DANN/JiGen take one step per inner step, MCD takes A, B, then C ``num_k`` times.

Outer loss: ``L_val(theta') = cross_entropy(predict_{theta'}(batch_test.x), batch_test.y)``.

``order=2`` (exact): ``d L_val(theta'(theta)) / d theta``, differentiating through every inner
step (``create_graph=True``: Hessian-vector products of the learner's own objectives). Exact for
the computation as the learner writes it: what a learner computes without a graph is a constant
here too (MCD's step B computes its features under ``no_grad``, so the exact meta-gradient does
not see how those features move with the featurizer). The inner steps' graph is built inside
:class:`~dgmeta.meta.double_backward.fast_double_backward`: same derivatives, but grouped
convolutions, 1x1 convolutions and batch norm get second derivatives that are cheap to evaluate
(a second-order meta-gradient on EfficientNet-Lite0 2.9x faster than with PyTorch's own,
``benchmarks/double_backward_profile.py``); the meta-test forward, differentiated only once, uses
PyTorch's own operations.

``order=1`` (first-order MAML): the inner steps are taken without a graph and the Jacobian
``d theta' / d theta`` is replaced by the identity, so the meta-gradient is the plain gradient of
``L_val`` evaluated at the adapted point, ``g_1 = (grad L_val)(theta')``, applied to theta. A
parameter no stage updates still gets ``grad L_val`` at its (unchanged) value.

Buffers (batch-norm running statistics, the featurizer's mean/std): every call works on a
*scratch copy* of the learner's buffers. The learner runs in whatever mode the caller set (train
mode during training), so batch norm normalises each inner step and the meta-test forward with
that batch's own statistics, exactly as the base objective does, and the running averages those
passes update are the copy's: meta episodes never move the real model's running statistics, which
keep tracking only the real training batches. The copy starts from the real statistics, so a
learner evaluated in eval mode sees the real ones.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from dgmeta.errors import ConfigError
from dgmeta.learners.base import Batch, Learner, Objective
from dgmeta.meta.double_backward import fast_double_backward

Params = dict[str, Tensor]


# ------------------------------------------------------------------ functional evaluation
def scratch_buffers(module: nn.Module) -> Params:
    """A private copy of the module's buffers (see the module docstring)."""
    return {name: buffer.clone() for name, buffer in module.named_buffers()}


def evaluate_objective(
    learner: Learner, params: Params, buffers: Params, batch: Batch, stage: str, progress: float
) -> Objective:
    return functional_call(learner, (params, buffers), (batch,), {"stage": stage, "progress": progress})


def prediction_loss(learner: Learner, params: Params, buffers: Params, batch: Batch) -> Tensor:
    """Cross-entropy of ``predict`` (the learner's ``forward(x)``) under ``params`` on labelled data."""
    logits = functional_call(learner, (params, buffers), (batch.x,))
    return F.cross_entropy(logits, batch.y)


class _FeatureView(nn.Module):
    """``forward(x) = learner.features(x)``, so functional_call can evaluate features under new params."""

    def __init__(self, learner: Learner):
        super().__init__()
        self.learner = learner

    def forward(self, x: Tensor) -> Tensor:
        return self.learner.features(x)


def functional_features(learner: Learner, params: Params, buffers: Params, x: Tensor) -> Tensor:
    view = _FeatureView(learner)
    prefixed = {f"learner.{k}": v for k, v in params.items()}
    prefixed.update({f"learner.{k}": v for k, v in buffers.items()})
    return functional_call(view, prefixed, (x,))


def trainable_params(learner: Learner) -> Params:
    return {name: p for name, p in learner.named_parameters() if p.requires_grad}


def detached_params(learner: Learner) -> Params:
    """Leaf copies sharing storage with the real parameters: differentiable, but gradients stay local."""
    return {name: p.detach().requires_grad_(True) for name, p in trainable_params(learner).items()}


# ------------------------------------------------------------------ the inner loop
@dataclass
class Adaptation:
    params: Params
    #: (stage name, detached loss) of every inner SGD step, in order
    losses: list[tuple[str, Tensor]] = field(default_factory=list)


def inner_adapt(
    learner: Learner,
    params: Params,
    batch: Batch,
    progress: float,
    inner_lr: float,
    inner_steps: int,
    create_graph: bool,
    buffers: Params | None = None,
) -> Adaptation:
    """``inner_steps`` SGD passes over all stages of ``learner`` on ``batch``, functionally.

    ``params`` (name -> tensor, all trainable parameters) is never modified; the result holds
    new tensors. With ``create_graph`` the result stays differentiable w.r.t. ``params`` (exact
    meta-gradient); without it every updated tensor is a fresh leaf (first-order meta-gradient).
    """
    buffers = scratch_buffers(learner) if buffers is None else buffers
    if create_graph:
        current = dict(params)
    else:  # fresh leaves: the inner gradients need them, and no graph leads back to ``params``
        current = {name: value.detach().requires_grad_(True) for name, value in params.items()}
    losses: list[tuple[str, Tensor]] = []
    for _ in range(inner_steps):
        for stage in learner.stages():
            names = [n for n in learner.stage_parameter_names(stage) if n in current]
            if not names:  # a stage over frozen modules only: nothing to step
                continue
            for _ in range(stage.repeat):
                if create_graph:
                    # A stage's SGD step needs the *partial* gradient w.r.t. its own parameters.
                    # Other tensors may already depend on them (MCD: step B's new heads were
                    # computed from the featurizer that step C now updates); differentiating
                    # w.r.t. fresh views of them keeps those indirect paths out.
                    current.update({name: current[name].view_as(current[name]) for name in names})
                loss = evaluate_objective(learner, current, buffers, batch, stage.name, progress).loss
                grads = torch.autograd.grad(
                    loss, [current[n] for n in names], create_graph=create_graph, allow_unused=True
                )
                for name, grad in zip(names, grads):
                    if grad is None:  # this stage's loss does not touch the parameter
                        continue
                    updated = current[name] - inner_lr * grad
                    current[name] = updated if create_graph else updated.detach().requires_grad_(True)
                losses.append((stage.name, loss.detach()))
    return Adaptation(current, losses)


# ------------------------------------------------------------------ the meta-gradient
@dataclass
class MetaGradient:
    #: d L_val / d theta for every trainable parameter (zeros where L_val does not depend on it)
    grads: Params
    val_loss: Tensor
    inner_losses: list[tuple[str, Tensor]]

    def norm(self) -> Tensor:
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in self.grads.values()]))


def meta_gradient(
    learner: Learner,
    batch_train: Batch,
    batch_test: Batch,
    progress: float,
    inner_lr: float,
    inner_steps: int = 1,
    order: int = 1,
) -> MetaGradient:
    """``d L_val(theta') / d theta`` at the learner's current parameters (see the module docstring).

    Nothing is written into ``.grad``: the caller decides how to apply the result.
    """
    if order not in (1, 2):
        raise ConfigError(f"meta_order={order} is not supported", "pass --set meta_order=1 (first-order) or 2 (exact)")
    exact = order == 2
    theta = trainable_params(learner)
    buffers = scratch_buffers(learner)
    with fast_double_backward() if exact else nullcontext():  # the inner graph is differentiated twice
        adapted = inner_adapt(learner, theta, batch_train, progress, inner_lr, inner_steps, exact, buffers)
    val_loss = prediction_loss(learner, adapted.params, buffers, batch_test)  # once: PyTorch's own ops are faster
    wrt = theta if exact else adapted.params
    names = list(wrt)
    grads = torch.autograd.grad(val_loss, [wrt[n] for n in names], allow_unused=True)
    out = {n: torch.zeros_like(wrt[n]) if g is None else g.detach() for n, g in zip(names, grads)}
    return MetaGradient(out, val_loss.detach(), adapted.losses)
