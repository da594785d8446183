"""MetaDA (Li & Hospedales, ECCV 2020): meta-learn the initialisation of any DA learner.

An episode adapts the learner with its *own* objective on the meta-train sources (the held-out
source's images play the unlabelled target) and scores the adapted model on the held-out
source's labels; the meta-gradient of that score (:mod:`dgmeta.meta.gradient`) moves the
parameters toward points from which the learner's own adaptation generalises.

Schedules (hparam ``meta_schedule``):

* ``online`` (default, the paper's online variant): every step is the base learner's usual
  update on the full batch plus ``meta_weight`` x the meta-gradient of this step's episode (one
  held-out split a step, cycling through them: an unbiased estimate of the all-splits mean at a
  third of its cost; ``meta_splits=all`` averages every split each step, see
  :mod:`dgmeta.meta.stepper`), added
  to the first stage's gradient before its optimizer step (so momentum, weight decay, the lr
  schedule and gradient clipping of the base optimizer apply to the sum).
* ``offline``: the first ``offline_meta_steps`` calls of the episodic stepper's ``step``
  (:class:`~dgmeta.meta.stepper.EpisodicStepper`) are this term's pure meta-updates of the initialisation, ``theta <- theta - meta_lr * meta-gradient`` (plain SGD, its own optimizer,
  learner objectives evaluated at progress 0, the point the initialisation is used from); after
  them ``step`` is the ordinary base step (with any online term, e.g. the critic's under
  ``init+critic``). Step counting: ``--steps`` counts *base* steps, so an offline run makes
  ``offline_meta_steps + steps`` calls in all (the stepper's ``total_calls``);
  ``step_count``/:meth:`progress` (learning-rate schedule, DANN's lambda(p)) count base steps
  only and start at 0 after the meta phase. A loop that calls ``step`` only ``steps`` times
  still works but trains the base learner for ``steps - offline_meta_steps`` steps.

Inner step (hparams ``inner_lr``, ``inner_update``): each parameter steps ``inner_lr`` x its
group's current outer learning rate (heads at ``head_lr_mult`` x the backbone's, as in the outer
step; DomainBed's MLDG and Feature-Critic take their inner step at the outer learning rate), with
the outer optimizer's kind of step (``inner_update=outer``: SGD for ``optimizer=sgd``, a fresh
Adam's first step for ``adam``). ``inner_lr=0`` is the control "extra supervised term, no
meta-learning": the term is then ``meta_weight`` x the held-out loss's plain gradient.
``meta_update=shortest_path`` replaces first-order MAML by the path-sum gradient
(:mod:`dgmeta.meta.gradient`).

Extra parameters (a DANN discriminator, MCD's second classifier, a jigsaw head) need nothing
special: the meta-gradient covers every trainable parameter of the learner.

Cost of an online step, on top of the base step (one forward/backward of the full batch): the
inner loop's forward/backward on the meta-train domains (per stage and repeat) plus one on the
meta-test domain, i.e. about one more full-batch pass for first order under ``meta_splits=sample``
(S more under ``all``), whatever the learner; nothing
of the base pass can be reused, because the inner objective differs from the base one (other
domains, the held-out source as the unlabelled target). Second order adds the backward through the
inner backward (double backward, Hessian-vector products), built with
:mod:`dgmeta.meta.double_backward` so that depthwise and 1x1 convolutions and batch norm
differentiate cheaply. Measured step times: benchmarks/README.md, "Step throughput".
"""

from __future__ import annotations

import torch

from dgmeta.errors import ConfigError
from dgmeta.hparam_spec import HParam, at_least, one_of, positive
from dgmeta.learners.base import Batch, Learner
from dgmeta.meta.episodes import Episode
from dgmeta.meta.gradient import INNER_RULES, METHODS, MetaGradient, meta_gradient, trainable_params
from dgmeta.meta.registry import META_TERMS
from dgmeta.meta.stepper import EpisodicStepper, Params, choose, episode_hparams, require_finite

SCHEDULES = ("online", "offline")
INNER_UPDATES = ("outer",) + INNER_RULES
_NAN_HINT = "lower --set inner_lr=... or --set meta_lr=..., or use --set meta_order=1"


@META_TERMS.register("init")
class MetaInitTerm:
    """The meta-gradient of one episode, weighted by ``meta_weight`` (online MetaDA), or the offline
    meta-updates of the initialisation before base training (``meta_schedule=offline``)."""

    name = "init"
    HPARAMS = {
        "inner_lr": HParam(1.0, lambda r: float(r.choice([0.5, 1.0, 2.0])), "inner step size as a multiple of each parameter group's outer learning rate (0: no inner step, the control 'extra supervised term, no meta-learning')", at_least(0)),
        "inner_update": HParam("outer", lambda r: "outer", "outer (the outer optimizer's kind of step: SGD, or a fresh Adam's first step under optimizer=adam) | sgd | adam", one_of("outer", "sgd", "adam")),
        "inner_steps": HParam(1, lambda r: int(r.choice([1, 2])), "inner steps k", positive(integer=True)),
        "meta_order": HParam(1, lambda r: 1, "1: first-order, 2: exact second-order", one_of(1, 2)),
        "meta_update": HParam("maml", lambda r: "maml", "maml (first-order or exact MAML, see meta_order) | shortest_path (MetaDA's path-sum gradient, first order)", one_of("maml", "shortest_path")),
        "meta_weight": HParam(1.0, lambda r: float(r.choice([0.5, 1.0])), "weight of the meta-gradient in the online update (DomainBed MLDG's beta)", at_least(0)),
        "meta_schedule": HParam("online", lambda r: "online", "online | offline", one_of("online", "offline")),
        "offline_meta_steps": HParam(100, lambda r: 100, "meta-iterations before base training (offline)", at_least(0, integer=True)),
        "meta_lr": HParam(0.01, lambda r: float(10 ** r.uniform(-3, -1.5)), "outer learning rate (offline)", positive()),
        **episode_hparams(splits="sample"),
    }

    def __init__(self, learner: Learner, hparams: dict):
        #: a multiple of each parameter's outer learning rate
        self.inner_lr = float(hparams["inner_lr"])
        self.inner_steps = int(hparams["inner_steps"])
        self.order = int(hparams["meta_order"])
        self.weight = float(hparams["meta_weight"])
        self.method = choose(hparams, "meta_update", METHODS)
        update = choose(hparams, "inner_update", INNER_UPDATES)
        if update == "outer":
            update = "adam" if str(hparams["optimizer"]) == "adam" else "sgd"
        self.rule = update
        if self.order not in (1, 2):
            raise ConfigError(f"meta_order={self.order} is not supported", "pass --set meta_order=1 (first-order) or 2 (exact)")
        if self.inner_steps < 1:
            raise ConfigError(f"inner_steps={self.inner_steps} must be at least 1", "pass e.g. --set inner_steps=1")
        if self.inner_lr < 0:
            raise ConfigError(f"inner_lr={self.inner_lr} is negative", "pass a multiple of the outer learning rate, e.g. --set inner_lr=1 (0: no inner step)")
        if self.method == "shortest_path" and self.order != 1:
            raise ConfigError("meta_update=shortest_path is a first-order meta-gradient", "use --set meta_order=1 with it, or --set meta_update=maml")
        self.schedule = choose(hparams, "meta_schedule", SCHEDULES)
        self.online = self.schedule == "online"
        self.offline_steps = 0 if self.online else int(hparams["offline_meta_steps"])
        if self.offline_steps < 0:
            raise ConfigError(f"offline_meta_steps={self.offline_steps} is negative", "pass e.g. --set offline_meta_steps=100")
        self.grad_clip = float(hparams["grad_clip"])
        # plain SGD of its own: the offline phase moves the initialisation, not the base optimizers' state
        self.meta_optimizer = torch.optim.SGD(list(trainable_params(learner).values()), lr=float(hparams["meta_lr"]))

    def meta_gradient(self, learner: Learner, episode: Episode, progress: float, step_sizes: dict[str, float]) -> MetaGradient:
        alphas = {name: self.inner_lr * lr for name, lr in step_sizes.items()}
        result = meta_gradient(
            learner, episode.meta_train, episode.meta_test, progress, alphas, self.inner_steps, self.order, self.rule, self.method
        )
        require_finite("meta-test loss", result.val_loss, learner, _NAN_HINT)
        return result

    def mean_meta_gradient(
        self, learner: Learner, episodes: list[Episode], progress: float, step_sizes: dict[str, float]
    ) -> tuple[Params, dict[str, float]]:
        """The meta-gradient averaged over ``episodes`` (unweighted), and the mean logs."""
        total: Params = {}
        logs: dict[str, float] = {}
        for episode in episodes:
            result = self.meta_gradient(learner, episode, progress, step_sizes)
            for name, grad in result.grads.items():
                total[name] = grad if name not in total else total[name] + grad
            for key, value in meta_logs(result).items():
                logs[key] = logs.get(key, 0.0) + value / len(episodes)
        mean = {name: grad / len(episodes) for name, grad in total.items()}
        logs["meta/grad_norm"] = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in mean.values()])))
        return mean, logs

    def gradients(
        self, learner: Learner, batch: Batch, episodes: list[Episode], progress: float, step_sizes: dict[str, float]
    ) -> tuple[Params, dict[str, float]]:
        mean, logs = self.mean_meta_gradient(learner, episodes, progress, step_sizes)
        return {name: self.weight * grad for name, grad in mean.items()}, logs

    def offline_step(self, stepper: EpisodicStepper, batch: Batch) -> dict[str, float]:
        """``theta <- theta - meta_lr * meta-gradient`` at progress 0, the point the initialisation is used from."""
        learner = stepper.learner
        learner.train()
        with stepper.episode_mode():  # frozen batch norm under freeze_bn, as in the base steps
            grads, logs = self.mean_meta_gradient(learner, stepper.next_episodes(batch), 0.0, stepper.step_sizes())
        self.meta_optimizer.zero_grad(set_to_none=True)
        params = trainable_params(learner)
        for name, param in params.items():
            param.grad = grads[name]
        # averaged over data-parallel ranks before clipping, as in the base step
        stepper.sync_gradients(list(params.values()))
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), self.grad_clip)
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        return logs

    def state_dict(self) -> dict:
        return {"meta_optimizer": self.meta_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])


def meta_logs(result: MetaGradient) -> dict[str, float]:
    logs = {"meta/val_loss": float(result.val_loss), "meta/grad_norm": float(result.norm())}
    if result.inner_losses:
        logs["meta/inner_loss"] = float(result.inner_losses[0][1])
    return logs
