"""The training loop of one (target, seed) job: balanced source batches -> stepper -> evaluation.

The loop only assembles batches and times things; *what* is optimised belongs to the learner
and *how* it is stepped to the stepper (plain or meta). Evaluation runs every ``eval_every``
steps on each source's validation split and the target's test split; the reported checkpoint is
chosen afterwards by source validation (``dgmeta.evaluation.selection``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from dgmeta.evaluation.accuracy import accuracy, precision_context, predict_array, to_float_images
from dgmeta.evaluation.selection import Checkpoint, SelectionHistory
from dgmeta.learners.base import Batch, Learner
from dgmeta.training.data import JobData
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

    def __init__(self, data: JobData, batch_size: int, seed: int, augment: bool):
        from dgmeta.data import InfiniteBatches, augment_batch

        self._augment = augment_batch if augment else None
        self.generator = torch.Generator().manual_seed(seed)
        self.sources = [
            InfiniteBatches(d.images, d.labels, batch_size, seed=seed * 1000 + i) for i, d in enumerate(data.train)
        ]
        self.shots = None
        if data.target_shots is not None:
            self.shots = InfiniteBatches(
                data.target_shots.images, data.target_shots.labels,
                min(batch_size, len(data.target_shots.labels)), seed=seed * 1000 + 900,
            )
        self.target = None
        if data.target_unlabelled is not None and len(data.target_unlabelled.labels) > 0:
            self.target = InfiniteBatches(
                data.target_unlabelled.images, data.target_unlabelled.labels, batch_size, seed=seed * 1000 + 901
            )

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
        self.history = SelectionHistory()
        self.selected_state: dict[str, torch.Tensor] | None = None
        self.losses: dict[str, list[tuple[int, float]]] = {}
        self.start_step = 0
        self.step_seconds = 0.0
        self.data_seconds = 0.0
        self.images_seen = 0

    def _evaluate(self, step: int) -> None:
        checkpoint = evaluate(self.learner, self.data, self.precision)
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
        with StepProgress(self.steps, self.description, enabled=self.progress, start=self.start_step) as bar:
            for step in range(self.start_step, self.steps):
                t0 = time.perf_counter()
                batch = self.batches.next()
                t1 = time.perf_counter()
                with precision_context(self.precision):
                    logs = self.stepper.step(batch)
                t2 = time.perf_counter()
                self.data_seconds += t1 - t0
                self.step_seconds += t2 - t1
                self.images_seen += len(batch)
                for name, value in logs.items():
                    self.losses.setdefault(name, []).append((step + 1, value))
                self.on_metrics({f"train.{k}": v for k, v in logs.items()}, step + 1)
                bar.update(step + 1, logs.get("loss", next(iter(logs.values()), float("nan"))), self.images_per_second())
                if (step + 1) % self.eval_every == 0 or step + 1 == self.steps:
                    self._evaluate(step + 1)
        total = self.data_seconds + self.step_seconds
        return TrainOutcome(
            history=self.history,
            selected_state=self.selected_state or self.learner.state_dict(),
            losses=self.losses,
            images_per_second=self.images_per_second(),
            data_wait_fraction=self.data_seconds / total if total else 0.0,
            seconds=time.perf_counter() - started,
        )

    def images_per_second(self) -> float:
        total = self.data_seconds + self.step_seconds
        return self.images_seen / total if total > 0 else 0.0
