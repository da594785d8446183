"""Meta-learning wrappers around any base learner, chosen with ``--meta``.

``--meta`` names meta terms (:mod:`dgmeta.meta.registry`), e.g. ``init`` (MetaDA's meta-learned
initialisation, :mod:`dgmeta.meta.init`) or ``critic`` (Feature-Critic's meta-learned auxiliary
loss, :mod:`dgmeta.meta.critic`); ``a+b`` puts both into one episodic stepper, where each step
draws one set of episodes that every term uses. ``none`` is the plain
:class:`~dgmeta.training.stepper.StageStepper`.

``create_stepper(meta, learner, hparams, total_steps, num_sources, seed)`` builds the stepper;
the episodes (:mod:`dgmeta.meta.episodes`) and the meta-gradient (:mod:`dgmeta.meta.gradient`)
are shared building blocks.
"""

from __future__ import annotations

from dgmeta.learners.base import Learner
from dgmeta.meta.episodes import Episode, EpisodeSampler, split_batch
from dgmeta.meta.gradient import inner_adapt, meta_gradient
from dgmeta.meta.registry import META_TERMS, meta_help, meta_term_classes, meta_term_names
from dgmeta.meta.stepper import EpisodicStepper, MetaTerm
from dgmeta.training.stepper import StageStepper


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
    classes = meta_term_classes(meta)
    if not classes:
        return StageStepper(learner, hparams, total)
    terms = [cls(learner, hparams) for cls in classes]
    return EpisodicStepper(learner, hparams, total, num_sources, seed, terms)


def total_calls(stepper: StageStepper) -> int:
    """How many times a training loop calls ``stepper.step``: base steps plus any offline meta-steps."""
    return int(getattr(stepper, "total_calls", stepper.total_steps))


__all__ = [
    "META_TERMS",
    "create_stepper",
    "meta_help",
    "meta_term_classes",
    "meta_term_names",
    "total_calls",
    "EpisodeSampler",
    "Episode",
    "split_batch",
    "inner_adapt",
    "meta_gradient",
    "EpisodicStepper",
    "MetaTerm",
]
