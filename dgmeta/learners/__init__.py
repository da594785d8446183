"""Base DA learners, looked up by name: ``create_learner("dann", network, context, hparams)``."""

from dgmeta.learners.base import Batch, Learner, LearnerContext, Objective, Stage
from dgmeta.learners.registry import LEARNERS, create_learner, learner_class, learner_names

__all__ = ["Batch", "Learner", "LearnerContext", "Objective", "Stage", "LEARNERS", "create_learner", "learner_class", "learner_names"]
