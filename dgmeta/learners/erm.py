"""ERM: cross-entropy on the pooled labelled data (the reference row of every table)."""

from __future__ import annotations

import torch.nn.functional as F

from dgmeta.learners.base import Batch, Learner, Objective
from dgmeta.learners.registry import LEARNERS


@LEARNERS.register("erm")
class ERM(Learner):
    name = "erm"
    default_protocol = "dg"
    HPARAMS = {}

    def objective(self, stage: str, batch: Batch, progress: float) -> Objective:
        loss = F.cross_entropy(self.predict(batch.x), batch.y)
        return Objective(loss, {"cls": loss.detach()})
