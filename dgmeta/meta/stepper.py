"""The common frame of the meta wrappers: a :class:`StageStepper` that draws the episodes of a step
and lets each :class:`MetaTerm` (MetaDA's meta-gradient, Feature-Critic's auxiliary loss) add
its gradient before the first stage's optimizer step.

Episodes per step (hparam ``meta_splits``): ``all`` builds one episode per held-out split (every
source held out once with ``meta_test_domains=1``, as DomainBed's MLDG does each step) and the
terms average over them; ``sample`` draws one split (each source held out once per round of
:class:`EpisodeSampler`), an unbiased but noisier estimate of the same all-splits mean.
``meta_episode=target_shots`` (``ssda`` only) is MetaDA's SSDA episode instead: meta-train = every
labelled source with the real unlabelled target images as the adaptation target, meta-test = the
labelled target shots (domain index ``S``). The base step trains on the shots too (as MME does);
``meta_shots_in_base=false`` keeps them out of it, so they reach the model only as the meta-test
loss at the adapted parameters (an extension; with 3 shots a class the meta term then memorises them
itself, as fast as the base step does: measured in the README's issue-17 section).

Step sizes: :meth:`EpisodicStepper.step_sizes` gives every parameter its group's current outer
learning rate (schedule applied), so a term's inner step ``inner_lr`` is a multiple of it
(``inner_lr=0``: no inner step, the meta term is then a plain extra supervised gradient).

Batch norm in episodes (hparam ``episode_bn``): ``base`` runs episodes in the mode the base step
set (frozen statistics under ``freeze_bn``, as DomainBed); ``batch`` normalises every episode pass
with its own batch statistics (the running averages are never moved, see
:mod:`dgmeta.meta.gradient`).

Meta terms add gradients to the parameters of the learner's *first* stage only: that is the
stage whose optimizer steps right after :meth:`StageStepper.add_gradients`; gradients left on
other parameters would be wiped by their own stage's ``zero_grad`` anyway. For every learner in
dgmeta the first stage holds all parameters (MCD's step A trains G, F1 and F2).
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from typing import Iterator, Protocol, Sequence

import torch

from dgmeta.errors import ConfigError, TrainingError
from dgmeta.hparam_spec import FLAG, HParam, fraction, one_of, positive
from dgmeta.learners.base import Batch, Learner
from dgmeta.meta.episodes import Episode, EpisodeSampler, split_batch, target_shot_episode
from dgmeta.models.freezing import batchnorm_eval
from dgmeta.training.stepper import StageStepper

Params = dict[str, torch.Tensor]
SPLITS = ("all", "sample")
EPISODES = ("sources", "target_shots")
EPISODE_BN = ("base", "batch")


def episode_hparams(splits: str) -> dict[str, HParam]:
    """The episode settings :class:`EpisodicStepper` reads, for a term's ``HPARAMS``; ``splits``:
    the term's default ``meta_splits`` (the one its paper's code uses)."""
    return {
        "meta_test_domains": HParam(1, lambda r: 1, "held-out source domains per episode", positive(integer=True)),
        "meta_splits": HParam(splits, lambda r: splits, "all (average the meta terms over every held-out split each step, as DomainBed's MLDG) | sample (one split a step, in rounds, as Feature-Critic's code)", one_of(*SPLITS)),
        "meta_episode": HParam("sources", lambda r: "sources", "sources (hold out source domains; under ssda an extension) | target_shots (ssda: MetaDA's episode, meta-test = the labelled target shots)", one_of(*EPISODES)),
        "meta_shots_in_base": HParam(True, lambda r: True, "meta_episode=target_shots: the base step also trains on the labelled target shots (false: only the meta-test term sees them; an extension)", FLAG),
        "episode_bn": HParam("base", lambda r: "base", "base (episodes use the base step's batch-norm mode: frozen under freeze_bn) | batch (batch statistics in episodes)", one_of(*EPISODE_BN)),
        "meta_batch_fraction": HParam(1.0, lambda r: float(r.choice([0.5, 1.0])), "share of each domain's batch used in the episode (1: full per-domain batches, as MLDG)", fraction(low_open=True, high_open=False)),
    }


class MetaTerm(Protocol):
    """One meta-learned contribution to the model's update. A term class declares ``name`` and
    ``HPARAMS``, registers itself in :data:`dgmeta.meta.registry.META_TERMS` and is built as
    ``Term(learner, hparams)``; :func:`dgmeta.meta.create_stepper` puts every term of ``--meta``
    into one :class:`EpisodicStepper`."""

    name: str
    #: whether :meth:`gradients` joins every base step
    online: bool
    #: calls of :meth:`offline_step` the stepper makes before the first base step
    offline_steps: int

    def gradients(
        self, learner: Learner, batch: Batch, episodes: list[Episode], progress: float, step_sizes: dict[str, float]
    ) -> tuple[Params, dict[str, float]]:
        """Gradients (parameter name -> tensor, already weighted and averaged over ``episodes``) to
        add to the model's, and logs; ``step_sizes``: each parameter's outer learning rate now."""

    def offline_step(self, stepper: "EpisodicStepper", batch: Batch) -> dict[str, float]:
        """One update before base training (only called when ``offline_steps`` > 0)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def source_domain_count(learner: Learner) -> int:
    """Sources in a batch: the labelled domains, minus the target's shots under ``ssda``."""
    return learner.context.num_domains - (1 if learner.context.protocol == "ssda" else 0)


def choose(hparams: dict, key: str, allowed: tuple[str, ...]) -> str:
    value = str(hparams[key])
    if value not in allowed:
        raise ConfigError(f"unknown {key} {value!r}", f"use --set {key}=" + f" or {key}=".join(allowed))
    return value


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
    """A :class:`StageStepper` whose first stage also gets the gradients of the online ``terms``, all
    computed on the same episodes each step (drawn only when a term is online, so resumed runs draw
    the same ones). Terms with ``offline_steps`` take those calls of :meth:`step` first, in order;
    ``--steps`` counts base steps, so a run makes :attr:`total_calls` calls in all, and
    ``step_count``/:meth:`progress` count base steps only."""

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
        self.sources = source_domain_count(learner) if num_sources is None else int(num_sources)
        self.splits = choose(hparams, "meta_splits", SPLITS)
        self.episode_kind = choose(hparams, "meta_episode", EPISODES)
        self.episode_bn = choose(hparams, "episode_bn", EPISODE_BN)
        self.meta_test_domains = int(hparams["meta_test_domains"])
        if self.episode_kind == "target_shots":
            if learner.context.protocol != "ssda":
                raise ConfigError(
                    f"meta_episode=target_shots needs labelled target shots, which --protocol {learner.context.protocol} has none of",
                    "use --protocol ssda, or --set meta_episode=sources",
                )
            self.sampler = None  # one fixed split: sources -> target shots
        elif not hparams["meta_shots_in_base"]:
            raise ConfigError(
                "meta_shots_in_base=false only applies to meta_episode=target_shots (no other episode scores the shots)",
                "add --set meta_episode=target_shots under --protocol ssda, or drop meta_shots_in_base",
            )
        else:
            self.sampler = EpisodeSampler(self.sources, self.meta_test_domains, seed)
        self.terms: list[MetaTerm] = list(terms)
        self.online_terms = [term for term in self.terms if term.online]
        self.meta_steps_done = 0
        self._first_stage = set(learner.stage_parameter_names(self.stages[0]))

    @property
    def offline_steps(self) -> int:
        return sum(term.offline_steps for term in self.terms)

    @property
    def total_calls(self) -> int:
        """Calls of :meth:`step` a full run makes: every term's offline steps, then ``total_steps`` base steps."""
        return self.offline_steps + self.total_steps

    def in_meta_phase(self) -> bool:
        return self.meta_steps_done < self.offline_steps

    def step(self, batch: Batch, progress: float | None = None) -> dict[str, float]:
        if not self.in_meta_phase():
            return super().step(batch, progress)
        done = self.meta_steps_done
        for term in self.terms:
            if done < term.offline_steps:
                logs = term.offline_step(self, batch)
                self.meta_steps_done += 1
                return logs
            done -= term.offline_steps
        raise AssertionError("in_meta_phase() and the terms' offline_steps disagree")

    def term(self, name: str) -> MetaTerm:
        for term in self.terms:
            if term.name == name:
                return term
        raise KeyError(f"this stepper has no {name!r} meta term (it has: {', '.join(t.name for t in self.terms) or 'none'})")

    # -- episodes ----------------------------------------------------------------------------
    def held_out_splits(self) -> list[tuple[list[int], list[int]]]:
        """Every (meta-train, meta-test) split of the sources, meta-test ``meta_test_domains`` wide."""
        out = []
        for held_out in itertools.combinations(range(self.sources), self.meta_test_domains):
            out.append(([d for d in range(self.sources) if d not in held_out], list(held_out)))
        return out

    def _episode_batch(self, batch: Batch) -> Batch:
        fraction = float(self.hparams["meta_batch_fraction"])
        if fraction < 1.0:
            batch = batch.select(leading_fraction_per_domain(batch.domain, fraction))
        return batch

    def next_episode(self, batch: Batch) -> Episode:
        """One episode: the sampler's next split (or the SSDA target-shot episode)."""
        batch = self._episode_batch(batch)
        if self.sampler is None:
            return target_shot_episode(batch, self.sources)
        meta_train_ids, meta_test_ids = self.sampler()
        return Episode(meta_train_ids, meta_test_ids, *split_batch(batch, meta_train_ids, meta_test_ids))

    def next_episodes(self, batch: Batch) -> list[Episode]:
        """This step's episodes: every split under ``meta_splits=all``, else one."""
        if self.sampler is None or self.splits == "sample":
            return [self.next_episode(batch)]
        batch = self._episode_batch(batch)
        return [Episode(tr, te, *split_batch(batch, tr, te)) for tr, te in self.held_out_splits()]

    # -- step sizes and batch norm -----------------------------------------------------------------
    def step_sizes(self) -> dict[str, float]:
        """Each trainable parameter's current outer learning rate (its module's optimizer group)."""
        names = {id(p): n for n, p in self.learner.named_parameters()}
        sizes: dict[str, float] = {}
        for stage in self.stages:
            for opt in self.stage_optimizers(stage):
                for group in opt.param_groups:
                    for param in group["params"]:
                        sizes.setdefault(names[id(param)], float(group["lr"]))
        return sizes

    @contextmanager
    def episode_mode(self) -> Iterator[None]:
        """Batch-norm mode for episode passes: the base step's (``base``) or batch statistics (``batch``)."""
        norms = [m for m in self.learner.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        before = [m.training for m in norms]
        if self.episode_bn == "batch":
            for m in norms:
                m.train()
        elif self.hparams["freeze_bn"]:
            batchnorm_eval(self.learner)
        try:
            yield
        finally:
            for m, mode in zip(norms, before):
                m.train(mode)

    # -- the step -------------------------------------------------------------------------------
    def base_batch(self, batch: Batch) -> Batch:
        if self.hparams["meta_shots_in_base"] or self.sampler is not None:
            return batch
        return batch.select(batch.domain != self.sources)  # the shots' index; target_x is kept

    def add_gradients(self, batch: Batch, progress: float) -> dict[str, float]:
        if not self.online_terms:
            return {}
        episodes = self.next_episodes(batch)
        sizes = self.step_sizes()
        params = dict(self.learner.named_parameters())
        base_sq = sum(float(params[n].grad.pow(2).sum()) for n in self._first_stage if params[n].grad is not None)
        added: dict[str, torch.Tensor] = {}
        logs: dict[str, float] = {}
        with self.episode_mode():
            for term in self.online_terms:
                grads, term_logs = term.gradients(self.learner, batch, episodes, progress, sizes)
                for name, grad in grads.items():
                    if name in self._first_stage:
                        added[name] = grad if name not in added else added[name] + grad
                logs.update(term_logs)
        for name, grad in added.items():
            param = params[name]
            param.grad = grad.clone() if param.grad is None else param.grad.add_(grad)
        added_sq = sum(float(g.pow(2).sum()) for g in added.values())
        # what a step-size-matched control needs: how far the meta terms lengthen the base gradient
        if base_sq > 0:
            logs["meta/added_to_base_norm"] = math.sqrt(added_sq / base_sq)
        logs["meta/episodes"] = float(len(episodes))
        return logs

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["meta"] = {
            "sampler": None if self.sampler is None else self.sampler.state_dict(),
            "terms": {term.name: term.state_dict() for term in self.terms},
            "meta_steps_done": self.meta_steps_done,
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        meta = state["meta"]
        if self.sampler is not None:
            self.sampler.load_state_dict(meta["sampler"])
        for term in self.terms:
            term.load_state_dict(meta["terms"][term.name])
        self.meta_steps_done = int(meta["meta_steps_done"])
