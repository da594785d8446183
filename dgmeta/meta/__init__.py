"""Meta-learning wrappers around any base learner, chosen with ``--meta``.

* ``none``: the plain :class:`~dgmeta.training.stepper.StageStepper`.
* ``init``: MetaDA's meta-learned initialisation (:mod:`dgmeta.meta.init`).
* ``critic``: Feature-Critic's meta-learned auxiliary loss (:mod:`dgmeta.meta.critic`).
* ``init+critic``: both; each step draws one episode, used by both terms.

``create_stepper(meta, learner, hparams, total_steps, num_sources, seed)`` builds the stepper;
the episodes (:mod:`dgmeta.meta.episodes`) and the meta-gradient (:mod:`dgmeta.meta.gradient`)
are shared building blocks.
"""

from __future__ import annotations

from typing import Callable

from dgmeta.learners.base import Learner
from dgmeta.meta.critic import CriticStepper, CriticTerm, FeatureCritic
from dgmeta.meta.episodes import Episode, EpisodeSampler, split_batch
from dgmeta.meta.gradient import inner_adapt, meta_gradient
from dgmeta.meta.init import MetaInitStepper
from dgmeta.meta.stepper import EpisodicStepper
from dgmeta.registry import Registry
from dgmeta.training.stepper import StageStepper

StepperFactory = Callable[[Learner, dict, int, "int | None", int], StageStepper]
META_MODES: Registry[StepperFactory] = Registry("meta mode")


@META_MODES.register("none")
def _plain(learner: Learner, hparams: dict, total_steps: int, num_sources: int | None, seed: int) -> StageStepper:
    return StageStepper(learner, hparams, total_steps)


@META_MODES.register("init")
def _init(learner: Learner, hparams: dict, total_steps: int, num_sources: int | None, seed: int) -> StageStepper:
    return MetaInitStepper(learner, hparams, total_steps, num_sources, seed)


@META_MODES.register("critic")
def _critic(learner: Learner, hparams: dict, total_steps: int, num_sources: int | None, seed: int) -> StageStepper:
    return CriticStepper(learner, hparams, total_steps, num_sources, seed)


@META_MODES.register("init+critic")
def _init_critic(learner: Learner, hparams: dict, total_steps: int, num_sources: int | None, seed: int) -> StageStepper:
    # In the offline schedule the critic joins after the meta phase, with the base steps.
    return MetaInitStepper(learner, hparams, total_steps, num_sources, seed, extra_terms=[CriticTerm(learner, hparams)])


def create_stepper(
    meta: str,
    learner: Learner,
    hparams: dict,
    total_steps: int | None = None,
    num_sources: int | None = None,
    seed: int = 0,
) -> StageStepper:
    """The stepper for ``--meta``; ``num_sources`` defaults to the learner context's source count."""
    total = learner.context.total_steps if total_steps is None else int(total_steps)
    return META_MODES.get(meta or "none")(learner, hparams, total, num_sources, seed)


def total_calls(stepper: StageStepper) -> int:
    """How many times a training loop calls ``stepper.step``: base steps plus any offline meta-steps."""
    return int(getattr(stepper, "total_calls", stepper.total_steps))


__all__ = [
    "META_MODES",
    "create_stepper",
    "total_calls",
    "EpisodeSampler",
    "Episode",
    "split_batch",
    "inner_adapt",
    "meta_gradient",
    "EpisodicStepper",
    "MetaInitStepper",
    "CriticStepper",
    "CriticTerm",
    "FeatureCritic",
]
