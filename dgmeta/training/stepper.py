"""Turns a learner's declared stages into optimizer steps.

One optimizer per module (the featurizer at ``lr``; each head trained from scratch at
``lr * head_lr_mult``), shared by every stage that trains that module: MCD's official code keeps
one optimizer per network (G, F1, F2) that all its steps use. Under Adam this matters: with an
optimizer of its own, MCD's discrepancy stage would take full-size normalised steps on a gradient
far smaller than the classification one (it fell to chance: README.md, the MCD fix); sharing the
moments scales it by the classification gradients.
Subclasses (the meta wrappers in ``dgmeta.meta``) add gradients through
:meth:`StageStepper.add_gradients` without the learner knowing.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from dgmeta.errors import ConfigError, TrainingError
from dgmeta.hparam_spec import FLAG, HParam, at_least, fraction, one_of, positive
from dgmeta.learners.base import Batch, Learner, Stage
from dgmeta.models.freezing import batchnorm_eval

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, groups: list[dict], lr: float, hparams: dict) -> torch.optim.Optimizer:
    """``adam`` (DomainBed's choice for fine-tuning a pretrained backbone; ``weight_decay`` as
    decoupled AdamW decay) or ``sgd`` (Nesterov momentum)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}", f"use --set optimizer={' or optimizer='.join(OPTIMIZERS)}")
    weight_decay = float(hparams["weight_decay"])
    if name == "adam":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    momentum = float(hparams["momentum"])
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)


def learning_rate_factor(schedule: str, progress: float, step: int, warmup_steps: int) -> float:
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "dann":  # Ganin & Lempitsky: mu_p = mu_0 / (1 + 10 p)^0.75
        return warm / (1.0 + 10.0 * progress) ** 0.75
    return warm


class StageStepper:
    #: the optimisation hyperparameters every run has, whatever its learner and meta terms
    HPARAMS = {
        "lr": HParam(1e-4, lambda r: float(10 ** r.uniform(-4.5, -3.3)), "learning rate of the backbone (for --set optimizer=sgd use about 0.01)", positive()),
        "head_lr_mult": HParam(10.0, lambda r: float(r.choice([1.0, 10.0])), "learning-rate multiplier for heads trained from scratch", positive()),
        "momentum": HParam(0.9, lambda r: 0.9, "SGD momentum (Nesterov)", fraction()),
        "weight_decay": HParam(5e-4, lambda r: float(10 ** r.uniform(-6, -3)), "L2 weight decay", at_least(0)),
        "lr_schedule": HParam("cosine", lambda r: "cosine", "cosine | constant | dann (mu0/(1+10p)^0.75)", one_of("cosine", "constant", "dann")),
        "warmup_steps": HParam(0, lambda r: 0, "linear warm-up steps", at_least(0, integer=True)),
        "grad_clip": HParam(0.0, lambda r: 0.0, "clip the gradient norm (0: off)", at_least(0)),
        "optimizer": HParam("adam", lambda r: "adam", "adam (AdamW, DomainBed's fine-tuning choice) | sgd (Nesterov momentum)", one_of(*OPTIMIZERS)),
        "freeze_bn": HParam(True, lambda r: bool(r.choice([True, False])), "batch norm keeps its ImageNet statistics (DomainBed freezes it); off under --weights none", FLAG),
    }

    def __init__(self, learner: Learner, hparams: dict, total_steps: int | None = None):
        self.learner = learner
        self.hparams = hparams
        self.total_steps = total_steps or learner.context.total_steps
        self.stages: list[Stage] = learner.stages()
        modules = list(dict.fromkeys(m for stage in self.stages for m in stage.modules))
        #: module name -> its optimizer (modules without trainable parameters have none)
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            name: opt for name in modules if (opt := self._make_optimizer(name)) is not None
        }
        self.step_count = 0
        #: fp16's loss scaler (dgmeta.device.grad_scaler), or None: each stage's loss is scaled
        #: before its backward and the gradients unscaled before clipping and the step, which
        #: the scaler skips when they overflowed
        self.scaler: torch.amp.GradScaler | None = None
        #: averages ``.grad`` over data-parallel processes; set by dgmeta.training.distributed.attach
        self.gradient_sync: Callable[[list[torch.Tensor]], None] | None = None

    def _make_optimizer(self, module_name: str) -> torch.optim.Optimizer | None:
        lr = float(self.hparams["lr"])
        head_mult = float(self.hparams["head_lr_mult"])
        params = [p for p in getattr(self.learner, module_name).parameters() if p.requires_grad]
        if not params:
            return None
        group_lr = lr * head_mult if module_name in set(self.learner.head_module_names()) else lr
        groups = [{"params": params, "lr": group_lr, "initial_lr": group_lr, "name": module_name}]
        return make_optimizer(str(self.hparams["optimizer"]), groups, lr, self.hparams)

    def stage_optimizers(self, stage: Stage) -> list[torch.optim.Optimizer]:
        return [self.optimizers[m] for m in stage.modules if m in self.optimizers]

    # -- the step ----------------------------------------------------------------------
    def progress(self) -> float:
        return min(1.0, self.step_count / max(1, self.total_steps))

    def _set_learning_rates(self) -> None:
        factor = learning_rate_factor(
            str(self.hparams["lr_schedule"]),
            self.progress(),
            self.step_count,
            int(self.hparams["warmup_steps"]),
        )
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * factor

    def step(self, batch: Batch, progress: float | None = None) -> dict[str, float]:
        """One training iteration over all stages; returns the logged loss terms."""
        p = self.progress() if progress is None else progress
        self.learner.train()
        if self.hparams["freeze_bn"]:
            batchnorm_eval(self.learner)
        self._set_learning_rates()
        logs: dict[str, float] = {}
        own_batch = self.base_batch(batch)
        for index, stage in enumerate(self.stages):
            opts = self.stage_optimizers(stage)
            for _ in range(stage.repeat):
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                objective = self.learner(own_batch, stage=stage.name, progress=p)
                self._check_finite(stage, objective)
                scaler = self.scaler
                (objective.loss if scaler is None else scaler.scale(objective.loss)).backward()
                if index == 0:
                    logs.update(self.add_gradients(batch, p))
                params = [q for opt in opts for g in opt.param_groups for q in g["params"]]
                self.sync_gradients(params)
                if scaler is not None:
                    for opt in opts:
                        scaler.unscale_(opt)
                clip = float(self.hparams["grad_clip"])
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                if scaler is None:
                    for opt in opts:
                        opt.step()
                else:  # updated per stage pass: MCD's discrepancy stage runs num_k times a step
                    # An overflow in any module skips the whole stage: stepping the finite modules
                    # alone would apply a partial update no fp32 run takes.
                    overflow = any(v.item() for opt in opts for v in scaler._found_inf_per_device(opt).values())
                    if not overflow:
                        for opt in opts:
                            scaler.step(opt)
                    scaler.update()
                prefix = "" if len(self.stages) == 1 else f"{stage.name}/"
                for name, value in objective.terms.items():
                    logs[prefix + name] = float(value)
                logs[prefix + "loss"] = float(objective.loss.detach())
        self.step_count += 1
        return logs

    def base_batch(self, batch: Batch) -> Batch:
        """Hook: the part of ``batch`` the learner's own stages train on (all of it here)."""
        return batch

    def add_gradients(self, batch: Batch, progress: float) -> dict[str, float]:
        """Hook: add extra gradients into ``.grad`` before the first stage's optimizer step."""
        return {}

    def sync_gradients(self, params: list[torch.Tensor]) -> None:
        """Hook: average ``.grad`` of ``params`` over data-parallel processes before an optimizer
        step (after any meta-gradient was added); a no-op unless the run is distributed."""
        if self.gradient_sync is not None:
            self.gradient_sync(params)

    def _check_finite(self, stage: Stage, objective) -> None:
        if torch.isfinite(objective.loss).item():
            return
        bad = [n for n, v in objective.terms.items() if not torch.isfinite(v).all().item()]
        term = bad[0] if bad else "loss"
        raise TrainingError(
            f"non-finite loss at step {self.step_count + 1}: term {term!r} of stage {stage.name!r} in learner {self.learner.name!r}",
            "lower --set lr=... or enable --set grad_clip=1.0; the last good checkpoint is kept",
        )

    # -- persistence ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "step_count": self.step_count,
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if set(state["optimizers"]) != set(self.optimizers):
            raise TrainingError(
                f"the checkpoint's optimizers ({', '.join(sorted(state['optimizers']))}) are not this run's "
                f"({', '.join(sorted(self.optimizers))}): it was written by an older dgmeta or another learner",
                "start the run afresh with --resume never",
            )
        self.step_count = int(state["step_count"])
        for name, opt_state in state["optimizers"].items():
            self.optimizers[name].load_state_dict(opt_state)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

