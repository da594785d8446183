"""Weight averaging of a training run: the averaged weights are the model the run reports.

* ``ema``: an exponential moving average of the weights after every step (decay warmed up as
  ``min(decay, (1 + t) / (10 + t))`` so early steps do not dominate).
* ``swad``: dense averaging (every step) over the low-loss region found on the *source
  validation* loss (Cha et al., NeurIPS 2021): averaging starts at the first evaluation whose loss
  is the lowest of the next ``swad_converge`` ones, and ends once ``swad_tolerance`` evaluations
  in a row exceed ``(1 + swad_tolerance_ratio)`` x the lowest loss seen; steps after the last
  evaluation within the tolerance are dropped. If the loss never converges, the steps after the
  last ``swad_converge`` evaluations are averaged.

The average runs over parameters and floating-point buffers; when batch norm was trained (not
frozen) the run recomputes its statistics for the averaged weights on training batches
(:func:`recompute_batchnorm`). Memory is bounded by ``swad_tolerance + swad_converge + 1`` copies.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dgmeta.errors import ConfigError
from dgmeta.hparam_spec import HParam, at_least, fraction, positive

AVERAGES = ("none", "ema", "swad")


def check_average(name: str) -> None:
    if name not in AVERAGES:
        raise ConfigError(f"unknown --average {name!r}", f"choose one of: {', '.join(AVERAGES)}")


def _float_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in module.state_dict().items() if v.is_floating_point()}


class Averager:
    """Base: no averaging; the live weights are the run's model."""

    name = "none"

    def update(self, module: nn.Module, step: int) -> None:
        pass

    def observe(self, step: int, val_loss: float) -> None:
        """An evaluation of the live weights at ``step`` (SWAD's region detection)."""

    def averaged_state(self, module: nn.Module) -> dict[str, Tensor] | None:
        """The averaged weights as a (partial, float-only) state dict; None: use the live ones."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _on_device_of(averaged: dict[str, Tensor] | None, reference: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """``averaged`` on the device of ``reference``: a checkpoint is loaded onto the CPU, and the
    averages then continue where the model trains (on a GPU they stay there, no copy per step)."""
    if not averaged or not reference:
        return averaged
    device = next(iter(reference.values())).device
    if next(iter(averaged.values())).device == device:
        return averaged
    return {k: v.to(device) for k, v in averaged.items()}


class EMA(Averager):
    name = "ema"

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema_decay={decay} must lie in (0, 1)", "use e.g. --set ema_decay=0.995")
        self.decay = decay
        self.shadow: dict[str, Tensor] | None = None
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        state = _float_state(module)
        self.shadow = _on_device_of(self.shadow, state)
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in state.items()}
        else:
            d = min(self.decay, (1 + self.updates) / (10 + self.updates))
            for k, v in state.items():
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
        self.updates += 1

    def averaged_state(self, module: nn.Module) -> dict[str, Tensor] | None:
        return None if self.shadow is None else {k: v.clone() for k, v in self.shadow.items()}

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.shadow, self.updates = state["shadow"], int(state["updates"])


class _Segment:
    """Sum of the weights of the steps since the previous evaluation."""

    def __init__(self) -> None:
        self.total: dict[str, Tensor] | None = None
        self.count = 0

    def add(self, state: dict[str, Tensor]) -> None:
        self.total = _on_device_of(self.total, state)
        if self.total is None:
            self.total = {k: v.detach().double().clone() for k, v in state.items()}
        else:
            for k, v in state.items():
                self.total[k].add_(v.detach().double())
        self.count += 1

    def merge(self, other: "_Segment") -> None:
        if other.total is None:
            return
        self.total = _on_device_of(self.total, other.total)
        if self.total is None:
            self.total = {k: v.clone() for k, v in other.total.items()}
        else:
            for k, v in other.total.items():
                self.total[k].add_(v)
        self.count += other.count


class SWAD(Averager):
    name = "swad"

    def __init__(self, converge: int = 3, tolerance: int = 6, tolerance_ratio: float = 0.3):
        if converge < 1 or tolerance < 1 or tolerance_ratio < 0:
            raise ConfigError(
                f"swad_converge={converge}, swad_tolerance={tolerance}, swad_tolerance_ratio={tolerance_ratio}: counts must be >= 1, the ratio >= 0",
                "use e.g. --set swad_converge=3 --set swad_tolerance=6 --set swad_tolerance_ratio=0.3",
            )
        self.converge, self.tolerance, self.ratio = converge, tolerance, tolerance_ratio
        self.losses: list[tuple[int, float]] = []
        self.current = _Segment()  # steps since the last evaluation
        self.pending: list[_Segment] = []  # closed segments not yet inside or outside the region
        self.committed = _Segment()  # the region so far
        self.started = False
        self.ended = False
        self.start_step: int | None = None
        self.end_step: int | None = None

    def update(self, module: nn.Module, step: int) -> None:
        if not self.ended:
            self.current.add(_float_state(module))

    def observe(self, step: int, val_loss: float) -> None:
        if self.ended:
            return
        self.losses.append((step, float(val_loss)))
        self.pending.append(self.current)
        self.current = _Segment()
        if not self.started:
            self._try_start()
        else:
            self._extend()

    def _try_start(self) -> None:
        # pending[i] holds the steps before evaluation i (of the still-undecided ones)
        window = [loss for _, loss in self.losses[-self.converge :]]
        if len(window) < self.converge:
            return
        if window[0] == min(window):
            self.started = True
            first = len(self.losses) - self.converge
            self.start_step = self.losses[first][0]
            # the region starts *after* the converged evaluation: keep the later segments pending
            self.pending = self.pending[-(self.converge - 1) :] if self.converge > 1 else []
            self._extend()
        else:
            self.pending = self.pending[-self.converge :]

    def _extend(self) -> None:
        region = [loss for step, loss in self.losses if step >= (self.start_step or 0)]
        threshold = min(region) * (1 + self.ratio)
        undecided = self.losses[-len(self.pending) :] if self.pending else []
        # commit every pending segment up to the last evaluation within the tolerance
        last_ok = max((i for i, (_, loss) in enumerate(undecided) if loss <= threshold), default=-1)
        for segment in self.pending[: last_ok + 1]:
            self.committed.merge(segment)
        if last_ok >= 0:
            self.end_step = undecided[last_ok][0]
        self.pending = self.pending[last_ok + 1 :]
        if len(self.pending) >= self.tolerance:
            self.ended = True
            self.pending = []

    def averaged_state(self, module: nn.Module) -> dict[str, Tensor] | None:
        total = _Segment()
        if self.started and self.committed.count:
            total = self.committed
        else:  # never converged (or nothing committed yet): the tail of the run
            for segment in self.pending[-self.converge :] + [self.current]:
                total.merge(segment)
        if total.total is None or total.count == 0:
            return None
        reference = _float_state(module)
        return {k: (v / total.count).to(reference[k].device, reference[k].dtype) for k, v in total.total.items()}

    def averaged_steps(self) -> int:
        return self.committed.count if self.started and self.committed.count else sum(s.count for s in self.pending[-self.converge :] + [self.current])

    def state_dict(self) -> dict:
        seg = lambda s: {"total": s.total, "count": s.count}  # noqa: E731
        return {
            "losses": self.losses, "current": seg(self.current), "pending": [seg(s) for s in self.pending],
            "committed": seg(self.committed), "started": self.started, "ended": self.ended,
            "start_step": self.start_step, "end_step": self.end_step,
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return

        def seg(d):
            s = _Segment()
            s.total, s.count = d["total"], int(d["count"])
            return s

        self.losses = [(int(a), float(b)) for a, b in state["losses"]]
        self.current, self.committed = seg(state["current"]), seg(state["committed"])
        self.pending = [seg(d) for d in state["pending"]]
        self.started, self.ended = bool(state["started"]), bool(state["ended"])
        self.start_step, self.end_step = state["start_step"], state["end_step"]


#: what ``--average ema|swad`` reads
HPARAMS = {
    "ema_decay": HParam(0.995, lambda r: float(r.choice([0.99, 0.995, 0.999])), "decay of --average ema", fraction(low_open=True)),
    "swad_converge": HParam(3, lambda r: 3, "SWAD: evaluations whose first is lowest to start averaging", positive(integer=True)),
    "swad_tolerance": HParam(6, lambda r: 6, "SWAD: evaluations above the tolerance that end averaging", positive(integer=True)),
    "swad_tolerance_ratio": HParam(0.3, lambda r: 0.3, "SWAD: loss up to (1 + ratio) x the lowest stays in the region", at_least(0)),
}


def create_averager(name: str, hparams: dict) -> Averager:
    check_average(name)
    if name == "ema":
        return EMA(float(hparams["ema_decay"]))
    if name == "swad":
        return SWAD(int(hparams["swad_converge"]), int(hparams["swad_tolerance"]), float(hparams["swad_tolerance_ratio"]))
    return Averager()


@torch.no_grad()
def recompute_batchnorm(module: nn.Module, batches, forward) -> None:
    """Re-estimate batch-norm running statistics of ``module`` from ``batches`` (cumulative mean)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = module.training
    module.train()
    try:
        for x in batches:
            forward(x)
    finally:
        for m in norms:
            m.momentum = momenta[m]
        module.train(was_training)
