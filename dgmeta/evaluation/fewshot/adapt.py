"""Episode-level adaptation primitives shared by the few-shot methods.

* :func:`prototypes` / :func:`proto_head`: class means and the Proto-MAML head built from them.
* :func:`fit_linear_head`: a new linear head trained by gradient steps on frozen features.
* :func:`adapt_all_layers`: gradient steps on every featurizer parameter plus a head, evaluated
  with ``torch.func.functional_call`` on per-episode copies of the parameters, so the trained
  network itself is never modified and episodes stay independent. With ``max_halvings`` the steps
  are plain SGD that never raises the support loss (:func:`descending_sgd`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from dgmeta.evaluation.fewshot.embed import eval_mode

Head = dict[str, Tensor]  # {"weight": [ways, D], "bias": [ways]}
HeadLogits = Callable[[Tensor, Head], Tensor]


def prototypes(features: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Class means ``[ways, D]`` (one matmul instead of a Python loop over classes)."""
    one_hot = F.one_hot(labels, ways).to(features.dtype)
    return (one_hot.T @ features) / one_hot.sum(0).clamp_min(1).unsqueeze(1)


def proto_head(features: Tensor, labels: Tensor, ways: int, temperature: float = 1.0) -> Head:
    """Proto-MAML's head: ``W = 2tc``, ``b = -t|c|^2``, i.e. ProtoNet's negative squared distance.

    ``-t|x - c|^2 = 2tc.x - t|c|^2 - t|x|^2`` and ``t|x|^2`` is shared by all classes, so this
    linear head starts out exactly as the nearest-prototype classifier (Triantafillou et al., 2020).
    """
    c = prototypes(features, labels, ways)
    return {"weight": 2.0 * temperature * c, "bias": -temperature * (c * c).sum(1)}


def linear_logits(features: Tensor, head: Head) -> Tensor:
    return F.linear(features, head["weight"], head["bias"])


def normalized_linear_logits(features: Tensor, head: Head) -> Tensor:
    # Unit-norm features make the head's step size independent of the backbone's feature scale.
    return F.linear(F.normalize(features, dim=-1), head["weight"], head["bias"])


def fit_linear_head(
    features: Tensor,
    labels: Tensor,
    ways: int,
    steps: int = 100,
    lr: float = 0.01,
    weight_decay: float = 1e-3,
) -> Head:
    """A new zero-initialised head trained with Adam on L2-normalised frozen features."""
    features = F.normalize(features.detach().float(), dim=-1)
    weight = torch.zeros(ways, features.shape[1], requires_grad=True)
    bias = torch.zeros(ways, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(F.linear(features, weight, bias), labels).backward()
        opt.step()
    return {"weight": weight.detach(), "bias": bias.detach()}


@dataclass
class Adapted:
    """Per-episode parameters after adaptation, and the support loss before each step."""

    params: dict[str, Tensor]
    head: Head
    support_losses: list[float] = field(default_factory=list)


def adapt_all_layers(
    featurizer: nn.Module,
    head: Head,
    logits: HeadLogits,
    support_x: Tensor,
    support_y: Tensor,
    *,
    steps: int,
    lr: float,
    head_lr: float | None = None,
    momentum: float = 0.0,
    max_halvings: int = 0,
) -> Adapted:
    """``steps`` full-batch SGD steps on copies of every trainable featurizer parameter and the head.

    The featurizer stays in eval mode: BatchNorm keeps its running statistics, because a
    support set of a few images per class gives useless batch statistics, and the query images
    are then normalised the same way as the support images were.

    ``max_halvings > 0`` (plain SGD only): a step that would raise the support loss is retried at
    half the step size, up to ``max_halvings`` times (:func:`descending_sgd`).
    """
    params = {n: p.detach().clone().requires_grad_(True) for n, p in featurizer.named_parameters() if p.requires_grad}
    head = {k: v.detach().clone().requires_grad_(True) for k, v in head.items()}

    def loss_of(params: dict[str, Tensor], head: Head) -> Tensor:
        return F.cross_entropy(logits(functional_call(featurizer, params, (support_x,)), head), support_y)

    if max_halvings > 0:
        if momentum:
            raise ValueError("max_halvings needs plain SGD (momentum=0)")
        with eval_mode(featurizer):
            (params, head), losses = descending_sgd(loss_of, [(params, lr), (head, head_lr or lr)], steps, max_halvings)
        return Adapted(params, head, losses)
    groups = [{"params": list(params.values()), "lr": lr}, {"params": list(head.values()), "lr": head_lr or lr}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    losses: list[float] = []
    with eval_mode(featurizer):
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_of(params, head)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return Adapted({n: p.detach() for n, p in params.items()}, {k: v.detach() for k, v in head.items()}, losses)


def descending_sgd(
    loss_of: Callable[..., Tensor],
    groups: list[tuple[dict[str, Tensor], float]],
    steps: int,
    max_halvings: int,
) -> tuple[list[dict[str, Tensor]], list[float]]:
    """Plain SGD that never accepts a step raising the loss (backtracking on the step size).

    Why: the step size a meta-learned initialisation was trained for (MetaDA's ``inner_lr``, taken
    in train mode on batches of dozens of images) can overshoot on a 5-image support set with a
    sharp prototype head; an adaptation that ends worse than where it started is no adaptation.
    ``groups`` are (tensors, step size) pairs and ``loss_of`` takes one dict per group. Each step
    tries the step sizes x 1, 1/2, ... 1/2**max_halvings and takes the first that does not raise the
    loss; if none does, adaptation stops there. Returns the final tensors (detached), one dict per
    group, and the loss before each step taken. An accepted candidate's loss (with its graph) gives
    the next step's gradient, so an uneventful step costs one forward and one backward.
    """
    current = [{n: t.detach().requires_grad_(True) for n, t in tensors.items()} for tensors, _ in groups]
    step_sizes = [lr for _, lr in groups]
    loss = loss_of(*current)
    losses: list[float] = []
    for _ in range(steps):
        grads = torch.autograd.grad(loss, [t for tensors in current for t in tensors.values()])
        scale, accepted = 1.0, None
        for _ in range(max_halvings + 1):
            flat_grads = iter(grads)
            candidate = [
                {n: (t - scale * lr * next(flat_grads)).detach().requires_grad_(True) for n, t in tensors.items()}
                for tensors, lr in zip(current, step_sizes)
            ]
            candidate_loss = loss_of(*candidate)
            if float(candidate_loss.detach()) <= float(loss.detach()):
                accepted = (candidate, candidate_loss)
                break
            scale /= 2
        if accepted is None:
            break
        losses.append(float(loss.detach()))
        current, loss = accepted
    return [{n: t.detach() for n, t in tensors.items()} for tensors in current], losses


@torch.no_grad()
def predict_adapted(
    featurizer: nn.Module, adapted: Adapted, logits: HeadLogits, x: Tensor, batch_size: int = 128
) -> Tensor:
    with eval_mode(featurizer):
        out = [
            logits(functional_call(featurizer, adapted.params, (x[i : i + batch_size],)), adapted.head).argmax(1)
            for i in range(0, len(x), batch_size)
        ]
    return torch.cat(out)


@torch.no_grad()
def support_loss(featurizer: nn.Module, adapted: Adapted, logits: HeadLogits, x: Tensor, y: Tensor) -> float:
    """Cross-entropy on the support set under the adapted parameters (for checks and tests)."""
    with eval_mode(featurizer):
        return float(F.cross_entropy(logits(functional_call(featurizer, adapted.params, (x,)), adapted.head), y))
