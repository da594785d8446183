"""Embed every image of the evaluated domain once; episodes then run on the cached features.

Hundreds of episodes reuse the same few thousand images, so the backbone runs once per image
instead of once per image per episode.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from dgmeta.evaluation.fewshot.progress import progress_bar


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm running statistics, no dropout) for the block, then restore."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def images_as_float(images, index: np.ndarray | slice | None = None) -> Tensor:
    """Images (uint8 array/tensor, or float in [0, 1]) -> float32 tensor in [0, 1], NCHW."""
    batch = images if index is None else images[index]
    if not isinstance(batch, Tensor):
        batch = np.asarray(batch)
        # Cached images are read-only memmaps; torch wants a writable buffer, and a copy of a
        # batch is what the float conversion below makes anyway.
        batch = torch.from_numpy(np.ascontiguousarray(batch) if batch.flags.writeable else np.array(batch))
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    return batch.float()


def embed_images(
    featurizer: nn.Module,
    images,
    batch_size: int = 64,
    progress: bool = True,
) -> Tensor:
    """Features ``[N, D]`` (float32, CPU) of every image, in eval mode and without gradients."""
    device = next(featurizer.parameters()).device
    chunks: list[Tensor] = []
    # no_grad rather than inference_mode: the cached features later feed autograd (finetune).
    with eval_mode(featurizer), torch.no_grad(), progress_bar("embedding images", len(images), progress) as advance:
        for start in range(0, len(images), batch_size):
            x = images_as_float(images, slice(start, start + batch_size)).to(device)
            chunks.append(featurizer(x).float().cpu())
            advance(len(x))
    if not chunks:
        return torch.zeros(0, getattr(featurizer, "output_dim", 0))
    return torch.cat(chunks)
