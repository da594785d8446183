"""Feature-Critic (Li, Yang, Zhou & Hospedales, ICML 2019): a meta-learned auxiliary loss.

A critic ``h_omega`` scores the features of a batch; the model is trained on its usual loss plus
``critic_weight * h_omega(features)``. The critic is learned so that adding it to one SGD step on
meta-train domains lowers the loss on the held-out source domain. Per step, with an episode:

    theta_old = theta - alpha * grad L_base(theta; meta-train)
    theta_new = theta - alpha * grad [L_base + h_omega(f_theta(x_meta-train))](theta; meta-train)
    critic loss = tanh( L_val(theta_new; meta-test) - L_val(theta_old; meta-test) )   -> Adam on omega

``alpha`` = ``critic_inner_lr``; ``theta`` = the parameters of the learner's *first stage* (all of
them for every dgmeta learner; MCD's step A), and ``L_base`` = that stage's objective, i.e. what
the model's own update minimises and what the critic is added to (CE for ERM; CE + adversarial for
DANN; CE + jigsaw for JiGen; both classifiers' CE for MCD). ``L_val`` = cross-entropy of
``predict`` on the meta-test labelled data, as in the paper. The critic only reaches the loss
through ``grad_theta h``, so ``theta_new`` is built with ``create_graph`` on the critic term alone
(second order in omega, first order in theta: theta is held fixed within the episode).

The model's own update: :meth:`StageStepper.add_gradients` adds ``critic_weight *
grad_theta h_omega(f_theta(x))`` on the *full* labelled batch (with the freshly updated critic) to
the first stage's gradient, so the base optimizer steps on ``L_base + critic_weight * h``.

The critic lives in the stepper (its state and Adam state are in ``state_dict`` for resume): it is
a training device only, not part of the saved network and not used at test time.

Cost per step, on top of the base step: the first-stage objective's forward/backward on the
meta-train half, the critic term's featurizer forward/backward on it (with a graph), the meta-test
forward at theta_old (no graph) and at theta_new with the backward into omega (a double backward
through the featurizer, built with :mod:`dgmeta.meta.double_backward`), and the featurizer
forward/backward of the model's critic term on the full batch. Measured (ERM, tf_efficientnet_lite0,
128 px, 96 images; ``benchmarks/step_throughput.py``): 3.24x the base step (6.7x with PyTorch's own
double backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmeta.learners.base import Batch, Learner
from dgmeta.meta.double_backward import fast_double_backward
from dgmeta.meta.episodes import Episode
from dgmeta.meta.gradient import (
    Params,
    detached_params,
    evaluate_objective,
    functional_features,
    prediction_loss,
    scratch_buffers,
    trainable_params,
)
from dgmeta.meta.stepper import EpisodicStepper, require_finite

_NAN_HINT = "lower --set critic_inner_lr=... or --set critic_lr=..., or --set critic_weight=0.1"


class FeatureCritic(nn.Module):
    """The paper's set-based critic: ``h(F) = softplus(rho(mean_i phi(f_i))) >= 0``.

    ``phi`` embeds each feature vector (Linear(d, H), ReLU, Linear(H, H), ReLU), the mean pools the
    batch into one set embedding (order-invariant, any batch size), and ``rho`` (Linear(H, H), ReLU,
    Linear(H, 1)) scores it; softplus keeps the auxiliary loss non-negative. ``H`` = ``critic_hidden``.
    """

    def __init__(self, feature_dim: int, hidden: int = 128):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        pooled = self.embed(features.flatten(1)).mean(dim=0)
        return F.softplus(self.score(pooled)).squeeze(-1)


class CriticTerm:
    """Trains the critic on each episode and returns ``critic_weight * grad_theta h`` on the full batch."""

    name = "critic"

    def __init__(self, learner: Learner, hparams: dict):
        reference = next(learner.parameters())
        self.critic = FeatureCritic(learner.feature_dim, int(hparams.get("critic_hidden", 128))).to(
            device=reference.device, dtype=reference.dtype
        )
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=float(hparams.get("critic_lr", 1e-3)))
        self.weight = float(hparams.get("critic_weight", 1.0))
        self.inner_lr = float(hparams.get("critic_inner_lr", 0.01))
        self.stage = learner.stages()[0]

    def gradients(self, learner: Learner, batch: Batch, episode: Episode, progress: float) -> tuple[Params, dict[str, float]]:
        logs = self.update_critic(learner, episode, progress)
        names = learner.stage_parameter_names(self.stage)
        params = trainable_params(learner)
        # scratch buffers: this extra forward must not move the real batch-norm statistics twice
        aux = self.weight * self.critic(functional_features(learner, params, scratch_buffers(learner), batch.x))
        grads = torch.autograd.grad(aux, [params[n] for n in names], allow_unused=True)
        logs["critic/aux_loss"] = float(aux.detach())
        return {n: g for n, g in zip(names, grads) if g is not None}, logs

    def update_critic(self, learner: Learner, episode: Episode, progress: float) -> dict[str, float]:
        """One Adam step on omega for ``tanh(L_val(theta_new) - L_val(theta_old))``."""
        theta = detached_params(learner)  # fixed within the episode: only omega is learned here
        names = [n for n in learner.stage_parameter_names(self.stage) if n in theta]
        inputs = [theta[n] for n in names]
        buffers = scratch_buffers(learner)

        base = evaluate_objective(learner, theta, buffers, episode.meta_train, self.stage.name, progress).loss
        base_grads = torch.autograd.grad(base, inputs, allow_unused=True)
        with fast_double_backward():  # omega's gradient differentiates this backward
            aux = self.critic(functional_features(learner, theta, buffers, episode.meta_train.x))
        aux_grads = torch.autograd.grad(aux, inputs, create_graph=True, allow_unused=True)

        theta_old, theta_new = dict(theta), dict(theta)
        for name, g_base, g_aux in zip(names, base_grads, aux_grads):
            g_base = torch.zeros_like(theta[name]) if g_base is None else g_base
            theta_old[name] = theta[name].detach() - self.inner_lr * g_base
            theta_new[name] = theta_old[name] if g_aux is None else theta_old[name] - self.inner_lr * g_aux
        with torch.no_grad():
            val_old = prediction_loss(learner, theta_old, buffers, episode.meta_test)
        val_new = prediction_loss(learner, theta_new, buffers, episode.meta_test)
        meta_loss = torch.tanh(val_new - val_old)
        require_finite("Feature-Critic meta-test loss", meta_loss, learner, _NAN_HINT)

        if meta_loss.requires_grad:  # False only if the features do not depend on the first stage
            self.optimizer.zero_grad(set_to_none=True)
            critic_params = list(self.critic.parameters())
            grads = torch.autograd.grad(meta_loss, critic_params, allow_unused=True)
            for param, grad in zip(critic_params, grads):
                param.grad = grad
            self.optimizer.step()
        return {
            "critic/meta_loss": float(meta_loss.detach()),
            "critic/val_old": float(val_old),
            "critic/val_new": float(val_new.detach()),
            "critic/base_loss": float(base.detach()),
        }

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])


class CriticStepper(EpisodicStepper):
    """Feature-Critic around any learner."""

    def __init__(
        self,
        learner: Learner,
        hparams: dict,
        total_steps: int | None = None,
        num_sources: int | None = None,
        seed: int = 0,
    ):
        self.critic_term = CriticTerm(learner, hparams)
        super().__init__(learner, hparams, total_steps, num_sources, seed, [self.critic_term])

    @property
    def critic(self) -> FeatureCritic:
        return self.critic_term.critic
