"""Endless shuffled mini-batches straight from an in-memory (or memory-mapped) image array."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dgmeta.errors import ConfigError


class InfiniteBatches:
    """Endless batches of ``(uint8 [B,3,S,S], int64 [B])`` drawn without replacement within an epoch.

    Every epoch is a fresh seeded permutation; a batch that crosses an epoch boundary takes the
    end of one permutation and the start of the next, so every sample is seen equally often even
    when ``batch_size`` does not divide (or exceeds) the number of samples. ``state_dict`` holds
    only the generator state at the start of the current epoch and the position within it (plain
    ints, safe for ``torch.load(weights_only=True)``); the permutation is recomputed on load.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise ConfigError("cannot draw batches from an empty sample list", "check the domain and split you selected")
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}", "pass e.g. --batch-size 32")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)
        self.epoch = -1
        self._new_epoch()

    def __len__(self) -> int:
        return len(self.labels)

    def _new_epoch(self) -> None:
        self._epoch_state = self._rng.bit_generator.state
        self._order = self._rng.permutation(len(self.labels))
        self._pos = 0
        self.epoch += 1

    def next_indices(self) -> np.ndarray:
        parts = []
        needed = self.batch_size
        while needed:
            if self._pos == len(self._order):
                self._new_epoch()
            take = self._order[self._pos : self._pos + needed]
            self._pos += len(take)
            needed -= len(take)
            parts.append(take)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.next_indices()
        # reading a memmap in file order is much faster than random access; restore batch order after
        order = np.argsort(index, kind="stable")
        rows = np.empty((len(index),) + self.images.shape[1:], dtype=self.images.dtype)
        rows[order] = self.images[index[order]]
        return torch.from_numpy(rows), torch.from_numpy(self.labels[index])

    def __iter__(self) -> "InfiniteBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_rng_state": self._epoch_state, "position": self._pos, "epoch": self.epoch, "size": len(self.labels), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != len(self.labels):
            raise ConfigError(
                f"batch state was saved for {state['size']} samples, this sampler has {len(self.labels)}",
                "resume with the same dataset, split and seed",
            )
        self._rng.bit_generator.state = state["epoch_rng_state"]
        self._new_epoch()
        self.epoch = state["epoch"]
        self._pos = state["position"]
        self.batch_size = state["batch_size"]
