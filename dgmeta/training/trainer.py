"""The training loop of one (target, seed) job: balanced source batches -> stepper -> evaluation.

The loop only assembles batches and times things; *what* is optimised belongs to the learner
and *how* it is stepped to the stepper (plain or meta). Evaluation runs every ``eval_every``
steps on each source's validation split and the target's test split; the reported checkpoint is
chosen afterwards by source validation (``dgmeta.evaluation.selection``).

Checkpoints (``checkpoint_every`` steps, 0 = at every evaluation, and at the last step) hand
:meth:`Trainer.state_dict` to ``on_checkpoint``; a state with a non-finite tensor is never handed
over, so the last good checkpoint survives a divergence. A stop signal (``stop``) ends the loop
after the current step with a checkpoint (``dgmeta.training.signals``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from dgmeta.evaluation.accuracy import accuracy, precision_context, predict_array, to_float_images
from dgmeta.errors import TrainingError
from dgmeta.evaluation.selection import Checkpoint, SelectionHistory
from dgmeta.learners.base import Batch, Learner
from dgmeta.training.checkpointing import capture_rng, first_non_finite, non_finite_error, restore_rng
from dgmeta.training.data import JobData
from dgmeta.training.signals import StopRequests
from dgmeta.training.stepper import StageStepper


@dataclass
class TrainOutcome:
    history: SelectionHistory
    selected_state: dict[str, torch.Tensor]
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    images_per_second: float = 0.0
    data_wait_fraction: float = 0.0
    seconds: float = 0.0


class BatchSource:
    """Draws one step's batch: ``batch_size`` images from every source (and the target)."""

    def __init__(self, data: JobData, batch_size: int, seed: int, augment: bool, dist=None):
        from dgmeta.data import augment_batch
        from dgmeta.training.distributed import SINGLE, make_batches

        # ``dist``: under DDP each rank draws its slice of the global batch (dgmeta.training.distributed)
        dist = dist or SINGLE
        batches = lambda d, size, seed: make_batches(d.images, d.labels, size, seed, dist)  # noqa: E731
        self._augment = augment_batch if augment else None
        self.generator = torch.Generator().manual_seed(seed + 7919 * dist.rank)
        self.sources = [batches(d, batch_size, seed * 1000 + i) for i, d in enumerate(data.train)]
        self.shots = None
        if data.target_shots is not None:
            self.shots = batches(data.target_shots, min(batch_size, len(data.target_shots.labels)), seed * 1000 + 900)
        self.target = None
        if data.target_unlabelled is not None and len(data.target_unlabelled.labels) > 0:
            self.target = batches(data.target_unlabelled, batch_size, seed * 1000 + 901)

    def _prepare(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = to_float_images(x_uint8)
        return self._augment(x, self.generator) if self._augment is not None else x

    def next(self) -> Batch:
        xs, ys, ds = [], [], []
        labelled = list(self.sources) + ([self.shots] if self.shots is not None else [])
        for index, source in enumerate(labelled):
            x, y = source.next()
            xs.append(x)
            ys.append(y)
            ds.append(torch.full((len(y),), index, dtype=torch.long))
        x = self._prepare(torch.cat(xs))
        target_x = self._prepare(self.target.next()[0]) if self.target is not None else None
        return Batch(x, torch.cat(ys), torch.cat(ds), target_x)

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "sources": [s.state_dict() for s in self.sources],
            "shots": None if self.shots is None else self.shots.state_dict(),
            "target": None if self.target is None else self.target.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        for s, st in zip(self.sources, state["sources"]):
            s.load_state_dict(st)
        if self.shots is not None and state["shots"] is not None:
            self.shots.load_state_dict(state["shots"])
        if self.target is not None and state["target"] is not None:
            self.target.load_state_dict(state["target"])


def evaluate(learner: Learner, data: JobData, precision: str) -> Checkpoint:
    val = {}
    for name, arrays in zip(data.sources, data.val):
        pred, _ = predict_array(learner, arrays.images, precision=precision)
        val[name] = accuracy(pred, arrays.labels)
    pred, _ = predict_array(learner, data.test.images, precision=precision)
    return Checkpoint(step=0, val=val, test={data.target: accuracy(pred, data.test.labels)})


class Trainer:
    def __init__(
        self,
        learner: Learner,
        stepper: StageStepper,
        data: JobData,
        batches: BatchSource,
        steps: int,
        eval_every: int,
        precision: str = "fp32",
        on_metrics: Callable[[dict[str, float], int], None] | None = None,
        progress: bool = True,
        description: str = "train",
        evaluate_fn: Callable[[Learner, JobData, str], Checkpoint] | None = None,
        checkpoint_every: int = 0,
        on_checkpoint: Callable[[int, dict], None] | None = None,
        stop: StopRequests | None = None,
    ):
        self.learner = learner
        self.stepper = stepper
        self.data = data
        self.batches = batches
        self.steps = steps
        self.eval_every = eval_every
        self.precision = precision
        self.on_metrics = on_metrics or (lambda metrics, step: None)
        self.progress = progress
        self.description = description
        self.checkpoint_every = checkpoint_every
        self.on_checkpoint = on_checkpoint
        self.stop = stop or StopRequests()
        self.last_checkpoint_step: int | None = None
        self.evaluate_fn = evaluate_fn or evaluate  # sharded under DDP: dgmeta.training.distributed
        self.history = SelectionHistory()
        self.selected_state: dict[str, torch.Tensor] | None = None
        self.losses: dict[str, list[tuple[int, float]]] = {}
        self.start_step = 0
        self.step_seconds = 0.0
        self.data_seconds = 0.0
        self.images_seen = 0

    def _evaluate(self, step: int) -> None:
        checkpoint = self.evaluate_fn(self.learner, self.data, self.precision)
        checkpoint.step = step
        if self.history.add(checkpoint):
            self.selected_state = copy.deepcopy(self.learner.state_dict())
        metrics = {f"acc.{d}.val": a for d, a in checkpoint.val.items()}
        metrics.update({f"acc.{d}.test": a for d, a in checkpoint.test.items()})
        metrics["val_acc"] = checkpoint.val_mean
        self.on_metrics(metrics, step)

    def fit(self) -> TrainOutcome:
        from dgmeta.training.progress import StepProgress

        started = time.perf_counter()
        with StepProgress(self.steps, self.description, enabled=self.progress, start=self.start_step) as bar, self.stop.deferred():
            for step in range(self.start_step, self.steps):
                t0 = time.perf_counter()
                batch = self.batches.next()
                t1 = time.perf_counter()
                with precision_context(self.precision):
                    logs = self._step(batch)
                t2 = time.perf_counter()
                self.data_seconds += t1 - t0
                self.step_seconds += t2 - t1
                self.images_seen += len(batch)
                for name, value in logs.items():
                    self.losses.setdefault(name, []).append((step + 1, value))
                self.on_metrics({f"train.{k}": v for k, v in logs.items()}, step + 1)
                bar.update(step + 1, logs.get("loss", next(iter(logs.values()), float("nan"))), self.images_per_second())
                evaluated = (step + 1) % self.eval_every == 0 or step + 1 == self.steps
                if evaluated:
                    self._evaluate(step + 1)
                if self.stop.requested or self._checkpoint_due(step + 1, evaluated):
                    self._checkpoint(step + 1)
                self.stop.raise_if_requested(step + 1, checkpointed=self.last_checkpoint_step == step + 1)
        total = self.data_seconds + self.step_seconds
        return TrainOutcome(
            history=self.history,
            selected_state=self.selected_state or self.learner.state_dict(),
            losses=self.losses,
            images_per_second=self.images_per_second(),
            data_wait_fraction=self.data_seconds / total if total else 0.0,
            seconds=time.perf_counter() - started,
        )

    def _step(self, batch: Batch) -> dict[str, float]:
        try:
            return self.stepper.step(batch)
        except TrainingError as exc:  # the stepper's non-finite guard: say which checkpoint survives
            if "checkpoint" in (exc.hint or ""):
                kept = f"the one after step {self.last_checkpoint_step}" if self.last_checkpoint_step else "none had been written yet"
                exc.hint = f"{exc.hint} ({kept})"
            raise

    def _checkpoint_due(self, step: int, evaluated: bool) -> bool:
        if self.on_checkpoint is None:
            return False
        if step == self.steps:
            return True
        return step % self.checkpoint_every == 0 if self.checkpoint_every > 0 else evaluated

    def _checkpoint(self, step: int) -> None:
        if self.on_checkpoint is None:
            return
        state = self.state_dict(step)
        # a finite loss can still leave inf/NaN weights (a huge step): never save such a state
        for what, tensors in (("parameter", state["learner"]), ("best-so-far parameter", state["selected_state"] or {})):
            bad = first_non_finite(tensors)
            if bad is not None:
                raise non_finite_error(f"{what} {bad!r}", step, self.learner.name, self.last_checkpoint_step)
        self.on_checkpoint(step, state)
        self.last_checkpoint_step = step

    # -- persistence: everything that decides the rest of the run --------------------------------
    def state_dict(self, step: int) -> dict:
        return {
            "step": step,
            "learner": self.learner.state_dict(),
            "stepper": self.stepper.state_dict(),
            "batches": self.batches.state_dict(),
            "rng": capture_rng(),
            "history": [{"step": c.step, "val": c.val, "test": c.test} for c in self.history.checkpoints],
            "selected_state": self.selected_state,
            "losses": {name: [[s, v] for s, v in values] for name, values in self.losses.items()},
            "timing": {"step_seconds": self.step_seconds, "data_seconds": self.data_seconds, "images_seen": self.images_seen},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`: the next :meth:`fit` runs the remaining steps only."""
        self.learner.load_state_dict(state["learner"])
        self.stepper.load_state_dict(state["stepper"])
        self.batches.load_state_dict(state["batches"])
        restore_rng(state["rng"])
        self.history = SelectionHistory([Checkpoint(c["step"], dict(c["val"]), dict(c["test"])) for c in state["history"]])
        self.selected_state = state["selected_state"]
        self.losses = {name: [(int(s), float(v)) for s, v in values] for name, values in state["losses"].items()}
        timing = state["timing"]
        self.step_seconds, self.data_seconds = float(timing["step_seconds"]), float(timing["data_seconds"])
        self.images_seen = int(timing["images_seen"])
        self.start_step = self.last_checkpoint_step = int(state["step"])

    def images_per_second(self) -> float:
        total = self.data_seconds + self.step_seconds
        return self.images_seen / total if total > 0 else 0.0
