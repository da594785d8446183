"""Model selection from recorded per-domain accuracies (never by peeking at the target).

Every evaluation records the accuracy of each source's validation split and of the target's
test split. The reported checkpoint is the one with the best mean *source validation*
accuracy ("training-domain validation", DomainBed's default rule); the target's accuracy at
that checkpoint is ``test_acc``. The oracle (best target accuracy) is recorded too, labelled as
such, because users ask for it, but it is never what ``test_acc`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SELECTION_RULE = "training_domain_validation"


@dataclass
class Checkpoint:
    step: int
    val: dict[str, float]  # source domain -> validation accuracy
    test: dict[str, float]  # target domain -> test accuracy ({} when the target was not evaluated)
    val_loss: dict[str, float] = field(default_factory=dict)  # source domain -> validation cross-entropy
    weights: str = "live"  # live | ema | swad: which weights were evaluated
    #: wall seconds spent training (data + steps, evaluation excluded) when it was taken: the compute axis
    train_seconds: float = 0.0

    @property
    def val_mean(self) -> float:
        return sum(self.val.values()) / max(1, len(self.val))


@dataclass
class SelectionHistory:
    checkpoints: list[Checkpoint] = field(default_factory=list)
    #: set by a weight average chosen on source validation (SWAD): it is the selected model
    final: Checkpoint | None = None

    def add(self, checkpoint: Checkpoint) -> bool:
        """Record a checkpoint; True when it is the new selected one."""
        best = self.selected()
        self.checkpoints.append(checkpoint)
        return best is None or checkpoint.val_mean > best.val_mean

    def selected(self) -> Checkpoint | None:
        if self.final is not None:
            return self.final
        return self.selected_live()

    def selected_live(self) -> Checkpoint | None:
        """The best checkpoint by source validation among those evaluated during training."""
        if not self.checkpoints:
            return None
        # Ties go to the earlier checkpoint: later ones gained nothing on validation.
        return max(self.checkpoints, key=lambda c: (c.val_mean, -c.step))

    def oracle(self) -> Checkpoint | None:
        """Best target accuracy; None unless the target was evaluated at every checkpoint."""
        if not self.checkpoints or any(not c.test for c in self.checkpoints):
            return None
        return max(self.checkpoints, key=lambda c: (sum(c.test.values()), -c.step))

    def to_dict(self) -> list[dict]:
        rows = self.checkpoints + ([self.final] if self.final is not None else [])
        return [{"step": c.step, "val": c.val, "test": c.test, "val_mean": c.val_mean, "val_loss": c.val_loss, "weights": c.weights,
                 "train_seconds": c.train_seconds} for c in rows]
