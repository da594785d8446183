"""Feature-Critic (Li, Yang, Zhou & Hospedales, ICML 2019): a meta-learned auxiliary loss.

A critic ``h_omega`` scores the features of a batch; the model is trained on its usual loss plus
``critic_weight * h_omega(features)``. The critic is learned so that adding it to one SGD step on
meta-train domains lowers the loss on the held-out source domain. Per step, with an episode:

    theta_old = theta - alpha * grad L_base(theta; meta-train)
    theta_new = theta - alpha * grad [L_base + h_omega(f_theta(x_meta-train))](theta; meta-train)
    critic loss = tanh( L_val(theta_new; meta-test) - L_val(theta_old; meta-test) )   -> Adam on omega

``alpha`` = ``critic_inner_lr`` x each parameter's outer learning rate (the official code's alpha is
its learning rate); ``theta`` = the parameters of the learner's *first stage* (all of
them for every dgmeta learner; MCD's step A), and ``L_base`` = that stage's objective, i.e. what
the model's own update minimises and what the critic is added to (CE for ERM; CE + adversarial for
DANN; CE + jigsaw for JiGen; both classifiers' CE for MCD). ``L_val`` = cross-entropy of
``predict`` on the meta-test labelled data, as in the paper. The critic only reaches the loss
through ``grad_theta h``, so ``theta_new`` is built with ``create_graph`` on the critic term alone
(second order in omega, first order in theta: theta is held fixed within the episode).

With several episodes a step (``meta_splits=all``) the critic takes one Adam step on the mean of
their meta-losses.

The model's own update: :meth:`StageStepper.add_gradients` adds ``critic_weight *
grad_theta h_omega(f_theta(x))`` on the *full* labelled batch (with the freshly updated critic) to
the first stage's gradient, so the base optimizer steps on ``L_base + critic_weight * h``.
``critic_weight`` defaults to 0.01, the official PACS code's weight.

Warm start (hparam ``warm_start``): the official code trains the critic from a converged
aggregated (ERM) baseline, not from ImageNet. ``--set warm_start=PATH`` loads the featurizer *and*
classifier of a dgmeta network file (``model/network.pt`` of an earlier ``dgmeta run``, e.g.
``--base erm --meta none`` on the same target) into the learner before the first step; a resumed
run then overrides them with its checkpoint. (``--weights PATH`` alone loads only the backbone.)

The critic lives in the stepper (its state and Adam state are in ``state_dict`` for resume): it is
a training device only, not part of the saved network and not used at test time.

Cost per step, on top of the base step: the first-stage objective's forward/backward on the
meta-train half, the critic term's featurizer forward/backward on it (with a graph), the meta-test
forward at theta_old (no graph) and at theta_new with the backward into omega (a double backward
through the featurizer, built with :mod:`dgmeta.meta.double_backward`), and the featurizer
forward/backward of the model's critic term on the full batch. Measured step times:
benchmarks/README.md, "Step throughput".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmeta.errors import ConfigError
from dgmeta.hparam_spec import TEXT, HParam, at_least, positive
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
from dgmeta.meta.registry import META_TERMS
from dgmeta.meta.stepper import episode_hparams, require_finite

_NAN_HINT = "lower --set critic_inner_lr=... or --set critic_lr=..., or --set critic_weight=0.001"


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


@META_TERMS.register("critic")
class CriticTerm:
    """Trains the critic on each episode and returns ``critic_weight * grad_theta h`` on the full batch."""

    name = "critic"
    online = True
    offline_steps = 0
    HPARAMS = {
        "critic_lr": HParam(1e-3, lambda r: float(10 ** r.uniform(-4, -2)), "Adam learning rate of the critic", positive()),
        "critic_hidden": HParam(128, lambda r: int(r.choice([64, 128, 256])), "critic hidden width", positive(integer=True)),
        "critic_weight": HParam(0.01, lambda r: float(r.choice([0.001, 0.01, 0.1])), "weight of h_omega in the model's loss (0.01: the official PACS code)", at_least(0)),
        "critic_inner_lr": HParam(1.0, lambda r: float(r.choice([0.5, 1.0, 2.0])), "alpha for theta_old/theta_new as a multiple of each parameter group's outer learning rate", at_least(0)),
        "warm_start": HParam("", lambda r: "", "path to a dgmeta model/network.pt (e.g. an ERM run's) whose featurizer and classifier the run starts from; empty: none", TEXT),
        **episode_hparams(splits="sample"),
    }

    def __init__(self, learner: Learner, hparams: dict):
        warm = str(hparams["warm_start"]).strip()
        if warm:  # before anything copies the learner's parameters
            load_warm_start(learner, warm)
        reference = next(learner.parameters())
        self.critic = FeatureCritic(learner.feature_dim, int(hparams["critic_hidden"])).to(
            device=reference.device, dtype=reference.dtype
        )
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=float(hparams["critic_lr"]))
        self.weight = float(hparams["critic_weight"])
        #: a multiple of each parameter's outer learning rate (an absolute step without step sizes)
        self.inner_lr = float(hparams["critic_inner_lr"])
        self.stage = learner.stages()[0]

    def gradients(
        self, learner: Learner, batch: Batch, episodes: list[Episode], progress: float, step_sizes: dict[str, float]
    ) -> tuple[Params, dict[str, float]]:
        logs = self.update_critic(learner, episodes, progress, step_sizes)
        names = learner.stage_parameter_names(self.stage)
        params = trainable_params(learner)
        # scratch buffers: this extra forward must not move the real batch-norm statistics twice
        aux = self.weight * self.critic(functional_features(learner, params, scratch_buffers(learner), batch.x))
        grads = torch.autograd.grad(aux, [params[n] for n in names], allow_unused=True)
        logs["critic/aux_loss"] = float(aux.detach())
        return {n: g for n, g in zip(names, grads) if g is not None}, logs

    def update_critic(
        self, learner: Learner, episodes: "Episode | list[Episode]", progress: float, step_sizes: dict[str, float] | None = None
    ) -> dict[str, float]:
        """One Adam step on omega for the mean over ``episodes`` of ``tanh(L_val(theta_new) - L_val(theta_old))``.

        ``step_sizes`` (parameter -> outer learning rate) scales alpha per parameter; without it
        ``critic_inner_lr`` is alpha itself."""
        episodes = [episodes] if isinstance(episodes, Episode) else list(episodes)
        parts = [self._meta_loss(learner, episode, progress, step_sizes) for episode in episodes]
        meta_loss = torch.stack([p[0] for p in parts]).mean()
        require_finite("Feature-Critic meta-test loss", meta_loss, learner, _NAN_HINT)

        if meta_loss.requires_grad:  # False only if the features do not depend on the first stage
            self.optimizer.zero_grad(set_to_none=True)
            critic_params = list(self.critic.parameters())
            grads = torch.autograd.grad(meta_loss, critic_params, allow_unused=True)
            for param, grad in zip(critic_params, grads):
                param.grad = grad
            self.optimizer.step()
        mean = lambda i: sum(float(p[i].detach()) for p in parts) / len(parts)  # noqa: E731
        return {"critic/meta_loss": float(meta_loss.detach()), "critic/val_old": mean(1), "critic/val_new": mean(2), "critic/base_loss": mean(3)}

    def _meta_loss(self, learner: Learner, episode: Episode, progress: float, step_sizes: dict[str, float] | None):
        theta = detached_params(learner)  # fixed within the episode: only omega is learned here
        names = [n for n in learner.stage_parameter_names(self.stage) if n in theta]
        inputs = [theta[n] for n in names]
        buffers = scratch_buffers(learner)
        alpha = {n: self.inner_lr * (1.0 if step_sizes is None else float(step_sizes.get(n, 0.0))) for n in names}

        base = evaluate_objective(learner, theta, buffers, episode.meta_train, self.stage.name, progress).loss
        base_grads = torch.autograd.grad(base, inputs, allow_unused=True)
        with fast_double_backward():  # omega's gradient differentiates this backward
            aux = self.critic(functional_features(learner, theta, buffers, episode.meta_train.x))
        aux_grads = torch.autograd.grad(aux, inputs, create_graph=True, allow_unused=True)

        theta_old, theta_new = dict(theta), dict(theta)
        for name, g_base, g_aux in zip(names, base_grads, aux_grads):
            g_base = torch.zeros_like(theta[name]) if g_base is None else g_base
            theta_old[name] = theta[name].detach() - alpha[name] * g_base
            theta_new[name] = theta_old[name] if g_aux is None else theta_old[name] - alpha[name] * g_aux
        with torch.no_grad():
            val_old = prediction_loss(learner, theta_old, buffers, episode.meta_test)
        val_new = prediction_loss(learner, theta_new, buffers, episode.meta_test)
        return torch.tanh(val_new - val_old), val_old, val_new, base

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])


def load_warm_start(learner: Learner, path: str) -> None:
    """Featurizer and classifier of the dgmeta network file ``path`` into ``learner`` (see the module docstring)."""
    from pathlib import Path

    from dgmeta.models.checkpoint import FORMAT

    file = Path(path).expanduser()
    hint = "give --set warm_start=PATH to a model/network.pt written by `dgmeta run` with the same --backbone and dataset"
    if not file.is_file():
        raise ConfigError(f"warm_start file {file} does not exist", hint)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files
        raise ConfigError(f"warm_start file {file} cannot be read ({type(exc).__name__})", hint) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"warm_start file {file} is not a dgmeta network file", hint)
    state = payload["state_dict"]
    for part in ("featurizer", "classifier"):
        module = getattr(learner, part)
        own = module.state_dict()
        given = {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}
        if set(given) != set(own) or any(tuple(given[k].shape) != tuple(own[k].shape) for k in own):
            raise ConfigError(f"warm_start file {file} does not fit this run's {part} (other backbone, classes or head)", hint)
        module.load_state_dict({k: v.to(own[k].device, own[k].dtype) for k, v in given.items()})
