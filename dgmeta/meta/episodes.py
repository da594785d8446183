"""Meta-learning episodes: which source domains play meta-train and which play meta-test.

MetaDA and Feature-Critic both simulate the domain shift of deployment *inside* the sources:
some source domains are meta-train, the held-out ones are meta-test. In these source episodes
(:func:`split_batch`) the real target domain never takes part: its index is never drawn, its
labelled shots (``ssda``, index ``S``) and its unlabelled images (``Batch.target_x``) are dropped
from both halves of an episode. Under ``ssda`` such episodes are dgmeta's extension.

MetaDA's own SSDA episode (:func:`target_shot_episode`, ``--set meta_episode=target_shots``) uses
the target instead: the inner loop adapts on the labelled sources toward the real unlabelled
target images, and the meta-test loss is the cross-entropy on the labelled target shots. The
unlabelled images carry no labels anywhere in dgmeta (``Batch.target_x`` is images only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dgmeta.errors import ConfigError, TrainingError
from dgmeta.learners.base import Batch


class EpisodeSampler:
    """Seeded meta-train / meta-test splits of the source domains ``0..S-1``.

    Held-out domains are taken in turn from a seeded random permutation of the sources, and a new
    permutation is drawn when one runs out, so every source is meta-test once every
    ``ceil(S / meta_test_domains)`` calls while the order still varies between rounds.
    """

    def __init__(self, source_domains: int, meta_test_domains: int = 1, seed: int = 0):
        if source_domains < 2:
            raise ConfigError(
                f"meta-learning needs at least 2 source domains to split into meta-train/meta-test, got {source_domains}",
                "use --meta none, or a dataset/target with two or more source domains",
            )
        if not 1 <= meta_test_domains < source_domains:
            raise ConfigError(
                f"meta_test_domains={meta_test_domains} must be between 1 and {source_domains - 1} for {source_domains} source domains",
                "pass e.g. --set meta_test_domains=1",
            )
        self.source_domains = int(source_domains)
        self.meta_test_domains = int(meta_test_domains)
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._queue: list[int] = []

    def __call__(self) -> tuple[list[int], list[int]]:
        held_out: list[int] = []
        while len(held_out) < self.meta_test_domains:
            if not self._queue:
                self._queue = torch.randperm(self.source_domains, generator=self._generator).tolist()
            domain = self._queue.pop(0)
            if domain in held_out:  # a round boundary inside this episode: keep it for later
                self._queue.append(domain)
                continue
            held_out.append(domain)
        meta_train = [d for d in range(self.source_domains) if d not in held_out]
        return meta_train, sorted(held_out)

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state(), "queue": list(self._queue)}

    def load_state_dict(self, state: dict) -> None:
        self._generator.set_state(state["generator"])
        self._queue = [int(d) for d in state["queue"]]


@dataclass
class Episode:
    meta_train_ids: list[int]
    meta_test_ids: list[int]
    meta_train: Batch
    meta_test: Batch


def split_batch(
    batch: Batch,
    meta_train_ids: list[int],
    meta_test_ids: list[int],
    meta_test_as_target: bool | None = None,
) -> tuple[Batch, Batch]:
    """Split a training batch into (meta-train, meta-test) by labelled-domain index.

    The meta-test domains' images become the meta-train batch's unlabelled ``target_x``, so a DA
    learner adapts toward the held-out source during the inner loop, as MetaDA does. By default
    that happens only when the batch itself carries target images (``msda``/``ssda``): a learner
    trained without ``target_x`` (``dg``) sees none in its inner loop either, so its inner
    objective is the same objective it is trained with. The real ``target_x`` is dropped from both
    halves, and labelled samples of domains in neither list (the ``ssda`` target shots) too.
    """
    if set(meta_train_ids) & set(meta_test_ids):
        raise ValueError(f"meta-train {meta_train_ids} and meta-test {meta_test_ids} domains overlap")
    train_mask = _domain_mask(batch, meta_train_ids)
    test_mask = _domain_mask(batch, meta_test_ids)
    for ids, mask in ((meta_train_ids, train_mask), (meta_test_ids, test_mask)):
        if not bool(mask.any()):
            raise TrainingError(
                f"the training batch holds no samples of source domain(s) {ids} needed for a meta episode",
                "meta-learning needs batches with samples of every source domain (the default balanced domain batches)",
            )
    if meta_test_as_target is None:
        meta_test_as_target = batch.target_x is not None
    meta_test = batch.select(test_mask).with_target(None)
    meta_train = batch.select(train_mask).with_target(meta_test.x if meta_test_as_target else None)
    return meta_train, meta_test


def target_shot_episode(batch: Batch, sources: int) -> Episode:
    """MetaDA's SSDA episode: meta-train = the labelled sources ``0..sources-1`` with the batch's
    unlabelled target images as their adaptation target; meta-test = the labelled target shots
    (domain index ``sources``), without unlabelled images."""
    if batch.target_x is None or batch.target_x.shape[0] == 0:
        raise TrainingError(
            "meta_episode=target_shots needs the unlabelled target images in the batch, and it has none",
            "use --protocol ssda (its batches carry them), or --set meta_episode=sources",
        )
    shot_ids, source_ids = [sources], list(range(sources))
    shots = batch.select(_domain_mask(batch, shot_ids)).with_target(None)
    meta_train = batch.select(_domain_mask(batch, source_ids))
    if len(shots) == 0 or len(meta_train) == 0:
        missing = "labelled target shots (domain index %d)" % sources if len(shots) == 0 else "labelled source images"
        raise TrainingError(
            f"the training batch holds no {missing}, which meta_episode=target_shots needs",
            "use --protocol ssda with --shots >= 1 (the trainer puts the shots into every batch)",
        )
    return Episode(source_ids, shot_ids, meta_train, shots)


def _domain_mask(batch: Batch, ids: list[int]) -> torch.Tensor:
    return torch.isin(batch.domain, torch.as_tensor(ids, dtype=batch.domain.dtype, device=batch.domain.device))
