"""Learners looked up by ``--base`` name. Every module of this package is imported before the
first lookup, so a new learner is one new file that registers its class: nothing lists them."""

from __future__ import annotations

from torch import nn

from dgmeta.learners.base import Learner, LearnerContext
from dgmeta.registry import Registry

LEARNERS: Registry[type[Learner]] = Registry("--base", package="dgmeta.learners")


def learner_class(name: str) -> type[Learner]:
    return LEARNERS.get(name)


def create_learner(name: str, network: nn.Module, context: LearnerContext, hparams: dict) -> Learner:
    return learner_class(name)(network, context, hparams)


def learner_names() -> list[str]:
    return LEARNERS.names()
