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

from dgmeta.device import autocast, host_to_device, module_device
from dgmeta.evaluation.accuracy import accuracy, predict_array, predict_with_loss, to_float_images
from dgmeta.errors import TrainingError
from dgmeta.evaluation.selection import Checkpoint, SelectionHistory
from dgmeta.learners.base import Batch, Learner
from dgmeta.training.checkpointing import capture_rng, first_non_finite, non_finite_error, restore_rng
from dgmeta.training.data import JobData
from dgmeta.training.averaging import SWAD, Averager, recompute_batchnorm
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

    def __init__(self, data: JobData, batch_size: int, seed: int, augment: bool, dist=None, train_size: int | None = None, device: torch.device | str = "cpu"):
        from dgmeta.data import augment_batch
        from dgmeta.training.distributed import SINGLE, make_batches

        # uint8 images cross to the device (4x fewer bytes than floats); conversion, resizing and
        # augmentation run there, their random numbers drawn from a generator on that device
        self.device = torch.device(device)

        # ``dist``: under DDP each rank draws its slice of the global batch (dgmeta.training.distributed)
        dist = dist or SINGLE
        batches = lambda d, size, seed: make_batches(d.images, d.labels, size, seed, dist)  # noqa: E731
        self._augment = augment_batch if augment else None
        self.train_size = train_size  # None: the decoded size
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 7919 * dist.rank)
        self.sources = [batches(d, batch_size, seed * 1000 + i) for i, d in enumerate(data.train)]
        self.shots = None
        if data.target_shots is not None:
            self.shots = batches(data.target_shots, min(batch_size, len(data.target_shots.labels)), seed * 1000 + 900)
        self.target = None
        if data.target_unlabelled is not None and len(data.target_unlabelled.labels) > 0:
            self.target = batches(data.target_unlabelled, batch_size, seed * 1000 + 901)

    def _prepare(self, x_uint8: torch.Tensor) -> torch.Tensor:
        from dgmeta.data.augment import resize_batch

        x = to_float_images(host_to_device(x_uint8, self.device))
        if self._augment is not None:
            return self._augment(x, self.generator, size=self.train_size)
        return resize_batch(x, self.train_size) if self.train_size else x

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
        labels = host_to_device(torch.cat(ys), self.device)
        return Batch(x, labels, host_to_device(torch.cat(ds), self.device), target_x)

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


def evaluate(learner: Learner, data: JobData, precision: str, with_test: bool = True) -> Checkpoint:
    """Accuracy (and cross-entropy) on every source's validation split, and on the target's test
    split unless ``with_test`` is False."""
    val, val_loss = {}, {}
    for name, arrays in zip(data.sources, data.val):
        pred, val_loss[name] = predict_with_loss(learner, arrays.images, arrays.labels, precision=precision)
        val[name] = accuracy(pred, arrays.labels)
    test = {}
    if with_test:
        pred, _ = predict_array(learner, data.test.images, precision=precision)
        test = {data.target: accuracy(pred, data.test.labels)}
    return Checkpoint(step=0, val=val, test=test, val_loss=val_loss)


def evaluate_test(learner: Learner, data: JobData, precision: str) -> dict[str, float]:
    pred, _ = predict_array(learner, data.test.images, precision=precision)
    return {data.target: accuracy(pred, data.test.labels)}


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
        averager: Averager | None = None,
        test_every_eval: bool = True,
        recompute_bn: bool = False,
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
        self.evaluate_fn = evaluate_fn  # sharded under DDP: dgmeta.training.distributed
        self.averager = averager or Averager()
        # False: the target is evaluated once, for the selected model (no oracle; much cheaper)
        self.test_every_eval = test_every_eval or evaluate_fn is not None
        self.recompute_bn = recompute_bn  # batch norm was trained: re-estimate it for averaged weights
        self.history = SelectionHistory()
        self.selected_state: dict[str, torch.Tensor] | None = None
        self.losses: dict[str, list[tuple[int, float]]] = {}
        self.start_step = 0
        self.step_seconds = 0.0
        self.data_seconds = 0.0
        self.images_seen = 0

    def _evaluate_now(self) -> Checkpoint:
        if self.evaluate_fn is not None:
            return self.evaluate_fn(self.learner, self.data, self.precision)
        return evaluate(self.learner, self.data, self.precision, with_test=self.test_every_eval)

    def _evaluate(self, step: int) -> None:
        if isinstance(self.averager, SWAD):  # the live weights' validation loss finds the region
            checkpoint = self._evaluate_now()
            if checkpoint.val_loss:
                self.averager.observe(step, sum(checkpoint.val_loss.values()) / len(checkpoint.val_loss))
        else:
            with self._averaged_weights() as weights:
                checkpoint = self._evaluate_now()
                checkpoint.weights = weights
                checkpoint.step = step
                if self.history.add(checkpoint):
                    self.selected_state = copy.deepcopy(self.learner.state_dict())
        checkpoint.step = step
        checkpoint.train_seconds = self.data_seconds + self.step_seconds
        if isinstance(self.averager, SWAD) and self.history.add(checkpoint):
            self.selected_state = copy.deepcopy(self.learner.state_dict())
        self._log_checkpoint(checkpoint, step)

    def _log_checkpoint(self, checkpoint: Checkpoint, step: int, prefix: str = "") -> None:
        metrics = {f"{prefix}acc.{d}.val": a for d, a in checkpoint.val.items()}
        metrics.update({f"{prefix}acc.{d}.test": a for d, a in checkpoint.test.items()})
        metrics[f"{prefix}val_acc"] = checkpoint.val_mean
        if checkpoint.val_loss:
            metrics[f"{prefix}val_loss"] = sum(checkpoint.val_loss.values()) / len(checkpoint.val_loss)
        self.on_metrics(metrics, step)

    def _averaged_weights(self):
        """Context: the averaged weights (EMA) loaded for the duration, the live ones after."""
        from contextlib import contextmanager

        @contextmanager
        def swap():
            averaged = self.averager.averaged_state(self.learner)
            if averaged is None:
                yield "live"
                return
            live = copy.deepcopy(self.learner.state_dict())
            self.learner.load_state_dict(averaged, strict=False)
            try:
                yield self.averager.name
            finally:
                self.learner.load_state_dict(live)

        return swap()

    def _finish(self) -> None:
        """The selected checkpoint gets its target accuracy if it was not evaluated along the way;
        under SWAD the dense average over its region then becomes the selected model (the best live
        checkpoint stays in the history, evaluated, for the paired comparison)."""
        selected = self.history.selected()
        if selected is not None and not selected.test and self.selected_state is not None:
            live = copy.deepcopy(self.learner.state_dict())
            self.learner.load_state_dict(self.selected_state)
            selected.test = evaluate_test(self.learner, self.data, self.precision)
            self.learner.load_state_dict(live)
        if not isinstance(self.averager, SWAD):
            return
        averaged = self.averager.averaged_state(self.learner)
        if averaged is None:
            return
        self.learner.load_state_dict(averaged, strict=False)
        if self.recompute_bn:
            recompute_batchnorm(self.learner, (self.batches.next().x for _ in range(8)), self.learner.predict)
        checkpoint = evaluate(self.learner, self.data, self.precision, with_test=True)
        checkpoint.step, checkpoint.weights = self.steps, "swad"
        checkpoint.train_seconds = self.data_seconds + self.step_seconds
        self.history.final = checkpoint
        self.selected_state = copy.deepcopy(self.learner.state_dict())
        self._log_checkpoint(checkpoint, self.steps, prefix="swad.")

    def fit(self) -> TrainOutcome:
        from dgmeta.training.progress import StepProgress

        started = time.perf_counter()
        device_type = module_device(self.learner).type
        with StepProgress(self.steps, self.description, enabled=self.progress, start=self.start_step) as bar, self.stop.deferred():
            for step in range(self.start_step, self.steps):
                t0 = time.perf_counter()
                batch = self.batches.next()
                t1 = time.perf_counter()
                with autocast(self.precision, device_type):
                    logs = self._step(batch)
                t2 = time.perf_counter()
                self.data_seconds += t1 - t0
                self.step_seconds += t2 - t1
                self.images_seen += len(batch)
                self.averager.update(self.learner, step + 1)
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
        self._finish()
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
            "history": [{"step": c.step, "val": c.val, "test": c.test, "val_loss": c.val_loss, "weights": c.weights, "train_seconds": c.train_seconds} for c in self.history.checkpoints],
            "averager": self.averager.state_dict(),
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
        self.history = SelectionHistory([
            Checkpoint(c["step"], dict(c["val"]), dict(c["test"]), dict(c.get("val_loss", {})), c.get("weights", "live"),
                       float(c.get("train_seconds", 0.0)))
            for c in state["history"]
        ])
        self.averager.load_state_dict(state.get("averager", {}))
        self.selected_state = state["selected_state"]
        self.losses = {name: [(int(s), float(v)) for s, v in values] for name, values in state["losses"].items()}
        timing = state["timing"]
        self.step_seconds, self.data_seconds = float(timing["step_seconds"]), float(timing["data_seconds"])
        self.images_seen = int(timing["images_seen"])
        self.start_step = self.last_checkpoint_step = int(state["step"])

    def images_per_second(self) -> float:
        total = self.data_seconds + self.step_seconds
        return self.images_seen / total if total > 0 else 0.0
