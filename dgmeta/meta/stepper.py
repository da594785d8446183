"""The common frame of the meta wrappers: a :class:`StageStepper` that draws one episode per step
and lets each :class:`MetaTerm` (MetaDA's meta-gradient, Feature-Critic's auxiliary loss) add
its gradient before the first stage's optimizer step.

Meta terms add gradients to the parameters of the learner's *first* stage only: that is the
stage whose optimizer steps right after :meth:`StageStepper.add_gradients`; gradients left on
other parameters would be wiped by their own stage's ``zero_grad`` anyway. For every learner in
dgmeta the first stage holds all parameters (MCD's step A trains G, F1 and F2).
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

from dgmeta.errors import TrainingError
from dgmeta.learners.base import Batch, Learner
from dgmeta.meta.episodes import Episode, EpisodeSampler, split_batch
from dgmeta.training.stepper import StageStepper

Params = dict[str, torch.Tensor]


class MetaTerm(Protocol):
    """One meta-learned contribution to the model's update."""

    name: str

    def gradients(self, learner: Learner, batch: Batch, episode: Episode, progress: float) -> tuple[Params, dict[str, float]]:
        """Gradients (parameter name -> tensor, already weighted) to add to the model's, and logs."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def source_domain_count(learner: Learner) -> int:
    """Sources in a batch: the labelled domains, minus the target's shots under ``ssda``."""
    return learner.context.num_domains - (1 if learner.context.protocol == "ssda" else 0)


def require_finite(what: str, value: torch.Tensor, learner: Learner, hint: str) -> None:
    if not torch.isfinite(value).all().item():
        raise TrainingError(f"non-finite {what} in learner {learner.name!r}", hint)


def leading_fraction_per_domain(domain: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask keeping the first ``ceil(fraction * n_d)`` samples of every domain ``d``.

    Batches are drawn shuffled, so the leading samples are a random subset; episodes on this
    subset cost ``fraction`` of a full-batch pass, which is what keeps the online meta step cheap
    (the meta-gradient is an estimate either way)."""
    keep = torch.zeros_like(domain, dtype=torch.bool)
    for d in domain.unique():
        index = (domain == d).nonzero().flatten()
        keep[index[: max(1, math.ceil(fraction * len(index)))]] = True
    return keep


class EpisodicStepper(StageStepper):
    """A :class:`StageStepper` whose first stage also gets the gradients of ``terms``, all computed
    on one episode per step (drawn only when there are terms, so resumed runs draw the same ones)."""

    def __init__(
        self,
        learner: Learner,
        hparams: dict,
        total_steps: int | None = None,
        num_sources: int | None = None,
        seed: int = 0,
        terms: Sequence[MetaTerm] = (),
    ):
        super().__init__(learner, hparams, total_steps)
        sources = source_domain_count(learner) if num_sources is None else int(num_sources)
        self.sampler = EpisodeSampler(sources, int(hparams.get("meta_test_domains", 1)), seed)
        self.terms: list[MetaTerm] = list(terms)
        self._first_stage = set(learner.stage_parameter_names(self.stages[0]))

    def term(self, name: str) -> MetaTerm:
        for term in self.terms:
            if term.name == name:
                return term
        raise KeyError(f"this stepper has no {name!r} meta term (it has: {', '.join(t.name for t in self.terms) or 'none'})")

    def next_episode(self, batch: Batch) -> Episode:
        meta_train_ids, meta_test_ids = self.sampler()
        fraction = float(self.hparams.get("meta_batch_fraction", 1.0))
        if fraction < 1.0:
            batch = batch.select(leading_fraction_per_domain(batch.domain, fraction))
        meta_train, meta_test = split_batch(batch, meta_train_ids, meta_test_ids)
        return Episode(meta_train_ids, meta_test_ids, meta_train, meta_test)

    def add_gradients(self, batch: Batch, progress: float) -> dict[str, float]:
        if not self.terms:
            return {}
        episode = self.next_episode(batch)
        params = dict(self.learner.named_parameters())
        logs: dict[str, float] = {}
        for term in self.terms:
            grads, term_logs = term.gradients(self.learner, batch, episode, progress)
            for name, grad in grads.items():
                if name not in self._first_stage:
                    continue
                param = params[name]
                param.grad = grad.clone() if param.grad is None else param.grad.add_(grad)
            logs.update(term_logs)
        return logs

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["meta"] = {
            "sampler": self.sampler.state_dict(),
            "terms": {term.name: term.state_dict() for term in self.terms},
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        meta = state["meta"]
        self.sampler.load_state_dict(meta["sampler"])
        for term in self.terms:
            term.load_state_dict(meta["terms"][term.name])
