"""The meta-gradient: how the loss on a held-out source domain changes with the parameters one
adapts *from* (MAML / MLDG / MetaDA). Everything functional, for any learner unchanged.

Notation: theta = all trainable parameters of the learner, ``batch_train`` = the meta-train
episode half (its ``target_x`` = the meta-test images under ``msda``/``ssda``), ``batch_test`` = the
meta-test half (labelled, never the target domain).

Inner loop, ``theta' = inner_adapt(theta)``: ``inner_steps`` times, run every stage of the learner
in its declared order, each ``repeat`` times, and update only that stage's own parameters with one
step (no momentum or weight decay)::

    theta_S <- theta_S - alpha_p * u(d L_S(theta; batch_train, progress) / d theta_S)

so ERM/DANN/JiGen take one step per inner step, MCD takes A, B, then C ``num_k`` times. ``alpha_p``
is ``inner_lr``, one number or one per parameter (the meta wrappers tie it to each parameter
group's outer learning rate). ``u`` is the update ``rule``: ``sgd`` (``u(g) = g``) or ``adam``
(``u(g) = g / (|g| + 1e-8)``: the first step of a freshly created Adam, bias correction included,
which is the inner step of DomainBed's MLDG; it moves every coordinate about ``alpha_p``, as the
outer Adam step does, where an SGD step at Adam's learning rate would barely move).

Outer loss: ``L_val(theta') = cross_entropy(predict_{theta'}(batch_test.x), batch_test.y)``.

``order=2`` (exact): ``d L_val(theta'(theta)) / d theta``, differentiating through every inner
step (``create_graph=True``: Hessian-vector products of the learner's own objectives). Exact for
the computation as the learner writes it: what a learner computes without a graph is a constant
here too (MCD's step B computes its features under ``no_grad``, so the exact meta-gradient does
not see how those features move with the featurizer). The inner steps' graph is built inside
:class:`~dgmeta.meta.double_backward.fast_double_backward`: same derivatives, but grouped
convolutions, 1x1 convolutions and batch norm get second derivatives that are cheap to evaluate
(measured against PyTorch's own: benchmarks/README.md); the meta-test forward, differentiated only once, uses
PyTorch's own operations.

``order=1`` (first-order MAML): the inner steps are taken without a graph and the Jacobian
``d theta' / d theta`` is replaced by the identity, so the meta-gradient is the plain gradient of
``L_val`` evaluated at the adapted point, ``g_1 = (grad L_val)(theta')``, applied to theta. A
parameter no stage updates still gets ``grad L_val`` at its (unchanged) value.

``method="shortest_path"`` (first order only): the direction from theta to the end of the whole
episode path, inner steps followed by one step on ``L_val``, expressed as a gradient: the sum of
the gradients along that path, ``sum_j g_j(theta_j) + (grad L_val)(theta')`` (for SGD steps
``(theta - theta_end) / alpha``). This is our reading of MetaDA's "online shortest-path"
meta-gradient (Li & Hospedales, ECCV 2020): it avoids differentiating through the inner path, like
first-order MAML, but keeps the inner gradients, as Reptile does and as first-order MLDG does for
one inner step (``grad L_tr(theta) + grad L_val(theta')``).

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
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from dgmeta.errors import ConfigError
from dgmeta.learners.base import Batch, Learner, Objective
from dgmeta.meta.double_backward import fast_double_backward

Params = dict[str, Tensor]
INNER_RULES = ("sgd", "adam")
METHODS = ("maml", "shortest_path")
#: Adam's default epsilon: its first step is ``lr * g / (|g| + eps)``
ADAM_EPS = 1e-8


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
    #: sum of every inner step's (detached) gradient per parameter; only where some stage stepped it
    path_grads: Params = field(default_factory=dict)


def step_size(inner_lr, name: str) -> float:
    """``inner_lr`` for parameter ``name``: the number itself, or its entry (0 where it has none)."""
    if isinstance(inner_lr, Mapping):
        return float(inner_lr.get(name, 0.0))
    return float(inner_lr)


def inner_update(grad: Tensor, rule: str) -> Tensor:
    if rule == "sgd":
        return grad
    if rule == "adam":
        return grad / (grad.abs() + ADAM_EPS)
    raise ConfigError(f"unknown inner update rule {rule!r}", f"use --set inner_update=outer or one of: {', '.join(INNER_RULES)}")


def inner_adapt(
    learner: Learner,
    params: Params,
    batch: Batch,
    progress: float,
    inner_lr: "float | Mapping[str, float]",
    inner_steps: int,
    create_graph: bool,
    buffers: Params | None = None,
    rule: str = "sgd",
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
    path: Params = {}
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
                    path[name] = grad.detach() if name not in path else path[name] + grad.detach()
                    alpha = step_size(inner_lr, name)
                    if alpha == 0.0:  # no step: also keeps a non-finite gradient from turning theta into nan
                        continue
                    updated = current[name] - alpha * inner_update(grad, rule)
                    current[name] = updated if create_graph else updated.detach().requires_grad_(True)
                losses.append((stage.name, loss.detach()))
    return Adaptation(current, losses, path)


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
    inner_lr: "float | Mapping[str, float]",
    inner_steps: int = 1,
    order: int = 1,
    rule: str = "sgd",
    method: str = "maml",
) -> MetaGradient:
    """``d L_val(theta') / d theta`` at the learner's current parameters, or with
    ``method="shortest_path"`` the path-sum gradient (see the module docstring).

    Nothing is written into ``.grad``: the caller decides how to apply the result.
    """
    if order not in (1, 2):
        raise ConfigError(f"meta_order={order} is not supported", "pass --set meta_order=1 (first-order) or 2 (exact)")
    if method not in METHODS:
        raise ConfigError(f"unknown meta_update {method!r}", f"choose one of: {', '.join(METHODS)}")
    if method == "shortest_path" and order != 1:
        raise ConfigError("meta_update=shortest_path is a first-order meta-gradient", "use --set meta_order=1 with it, or --set meta_update=maml")
    exact = order == 2
    theta = trainable_params(learner)
    buffers = scratch_buffers(learner)
    with fast_double_backward() if exact else nullcontext():  # the inner graph is differentiated twice
        adapted = inner_adapt(learner, theta, batch_train, progress, inner_lr, inner_steps, exact, buffers, rule)
    val_loss = prediction_loss(learner, adapted.params, buffers, batch_test)  # once: PyTorch's own ops are faster
    wrt = theta if exact else adapted.params
    names = list(wrt)
    grads = torch.autograd.grad(val_loss, [wrt[n] for n in names], allow_unused=True)
    out = {n: torch.zeros_like(wrt[n]) if g is None else g.detach() for n, g in zip(names, grads)}
    if method == "shortest_path":
        out = {n: g + adapted.path_grads[n] if n in adapted.path_grads else g for n, g in out.items()}
    return MetaGradient(out, val_loss.detach(), adapted.losses)
