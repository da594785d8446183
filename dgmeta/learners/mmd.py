"""MMD: domain alignment by kernel maximum mean discrepancy (Li et al., CVPR 2018, "MMD-AAE"'s
penalty), as DomainBed runs it: cross-entropy plus ``mmd_gamma`` times the mean, over every pair
of domains in the batch, of :func:`~dgmeta.losses.mmd.mmd_loss` (a sum of Gaussian kernels at seven
bandwidths) between their features. Which domains are aligned per protocol, and the one featurizer
pass over every image, are :class:`~dgmeta.learners.coral.DomainAlignment`'s, shared with CORAL.
"""

from __future__ import annotations

from torch import Tensor

from dgmeta.learners.coral import DomainAlignment
from dgmeta.learners.registry import LEARNERS
from dgmeta.losses.mmd import mmd_loss


@LEARNERS.register("mmd")
class MMD(DomainAlignment):
    name = "mmd"

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        return mmd_loss(x, y)
