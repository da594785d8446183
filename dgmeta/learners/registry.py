from __future__ import annotations

import importlib

from torch import nn

from dgmeta.learners.base import Learner, LearnerContext
from dgmeta.registry import Registry

LEARNERS: Registry[type[Learner]] = Registry("--base")

# Each module registers its class on import.
_MODULES = ("erm", "dann", "mcd", "jigen", "mme")


def _load_all() -> None:
    for module in _MODULES:
        try:
            importlib.import_module(f"dgmeta.learners.{module}")
        except ModuleNotFoundError as exc:  # a learner still being written must not break the rest
            if exc.name != f"dgmeta.learners.{module}":
                raise


def create_learner(name: str, network: nn.Module, context: LearnerContext, hparams: dict) -> Learner:
    _load_all()
    return LEARNERS.get(name)(network, context, hparams)


def learner_names() -> list[str]:
    _load_all()
    return LEARNERS.names()
