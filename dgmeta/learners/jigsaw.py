"""Jigsaw puzzles for JiGen: the permutation set and batched tile shuffling.

**Permutation set.** ``jigsaw_permutations(P, grid, seed)`` returns ``P + 1`` rows: row 0 is
the identity (the unshuffled image, jigsaw class 0) and rows ``1..P`` are permutations of the
``grid * grid`` tiles chosen greedily for maximal Hamming distance, as in Noroozi & Favaro
(ECCV 2016) and the JiGen code, but with a max-*min* criterion: each new permutation is the
candidate whose smallest Hamming distance to those already chosen (identity included) is
largest, ties broken by a seeded random order. Candidates are all ``9! = 362880``
permutations for ``grid=3`` (all ``(grid*grid)!`` whenever that is at most 9!, a seeded sample
of 100000 otherwise). Pairwise minimum Hamming distance of the whole set (identity included),
for ``grid=3`` — measured for seeds 0-3 and checked by the tests:

====================  =====
P                     min d
====================  =====
1 - 8                 9
9 - 18                8
19 - 75               7  (the JiGen default P=30)
76 - 300              6  (P=100)
301 - 1000            5
====================  =====

**Tiling.** The image is cut into ``grid x grid`` tiles of ``(H // grid) x (W // grid)``
pixels. When a side is not divisible by ``grid`` the tiled region is the largest centred
multiple of ``grid`` and the border left over (fewer than ``grid`` pixels per side) stays in
place: the output has the input's shape (shuffled and unshuffled images share a batch), no
pixel is resampled, and :func:`unshuffle_tiles` inverts :func:`shuffle_tiles` exactly.
Tile ``j`` (row-major) of a shuffled image is tile ``permutation[j]`` of the original.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
from torch import Tensor

from dgmeta.errors import ConfigError

#: beyond 9! candidates the full set is too large, so a seeded sample of this size is used
_SAMPLED_CANDIDATES = 100_000


def jigsaw_permutations(num_permutations: int, grid: int = 3, seed: int = 0) -> Tensor:
    """``[num_permutations + 1, grid * grid]`` long tensor; row 0 is the identity."""
    if grid < 2:
        raise ConfigError(f"--set grid={grid} gives no jigsaw puzzle", "use --set grid=3 (tiles per side)")
    available = math.factorial(grid * grid) - 1 if grid * grid <= 9 else _SAMPLED_CANDIDATES - 1
    if not 1 <= num_permutations <= available:
        raise ConfigError(
            f"--set num_permutations={num_permutations} is impossible for a {grid}x{grid} grid",
            f"choose between 1 and {available}, e.g. --set num_permutations=30",
        )
    return torch.tensor(_max_min_hamming_set(num_permutations, grid, seed), dtype=torch.long)  # a copy: the set is cached


@functools.lru_cache(maxsize=8)
def _max_min_hamming_set(num_permutations: int, grid: int, seed: int) -> np.ndarray:
    candidates = _candidates(grid, seed)  # row 0 is the identity
    columns = np.ascontiguousarray(candidates.T)  # one contiguous row per tile position: fast compares
    count = len(candidates)
    # score = min distance * count + a seeded random rank: argmax takes the largest minimum
    # distance and breaks ties at random, with one integer array
    rank = np.random.RandomState(seed).permutation(count).astype(np.int64)
    min_distance = np.full(count, grid * grid, dtype=np.int64)
    chosen = [0]
    for _ in range(num_permutations):
        min_distance = np.minimum(min_distance, _hamming_to(columns, candidates[chosen[-1]]))
        chosen.append(int(np.argmax(min_distance * count + rank)))
    return candidates[chosen].astype(np.int64)


def _hamming_to(columns: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    matches = np.zeros(columns.shape[1], dtype=np.int64)
    for position, tile in enumerate(permutation):
        matches += columns[position] == tile
    return len(permutation) - matches


def _candidates(grid: int, seed: int) -> np.ndarray:
    tiles = grid * grid
    if tiles <= 9:
        return _all_permutations(tiles)
    rng = np.random.RandomState(seed)
    sample = np.argsort(rng.rand(_SAMPLED_CANDIDATES - 1, tiles), axis=1)
    return np.concatenate([np.arange(tiles)[None], sample]).astype(np.int16)


@functools.lru_cache(maxsize=2)
def _all_permutations(tiles: int) -> np.ndarray:
    """All ``tiles!`` permutations in lexicographic order (row 0 is the identity)."""
    return np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)


def minimum_hamming_distance(permutations: Tensor) -> int:
    """Smallest number of positions in which any two rows differ."""
    distance = (permutations[:, None, :] != permutations[None, :, :]).sum(dim=2)
    distance.fill_diagonal_(permutations.shape[1] + 1)
    return int(distance.min())


def tile_region(height: int, width: int, grid: int) -> tuple[int, int, int, int]:
    """``(top, left, tile_height, tile_width)`` of the centred tiled region."""
    tile_h, tile_w = height // grid, width // grid
    if tile_h == 0 or tile_w == 0:
        raise ConfigError(
            f"{height}x{width} images are too small for a {grid}x{grid} jigsaw",
            f"use --image-size {grid * 8} or larger, or a smaller --set grid",
        )
    return (height - grid * tile_h) // 2, (width - grid * tile_w) // 2, tile_h, tile_w


def shuffle_tiles(x: Tensor, perm_indices: Tensor, permutations: Tensor, grid: int = 3) -> Tensor:
    """Image ``n`` with its tiles reordered by ``permutations[perm_indices[n]]``.

    ``x``: ``[N, C, H, W]``; ``perm_indices``: ``[N]`` rows of ``permutations`` (0 = identity).
    """
    return _rearrange(x, permutations[perm_indices], grid)


def unshuffle_tiles(x: Tensor, perm_indices: Tensor, permutations: Tensor, grid: int = 3) -> Tensor:
    """Inverse of :func:`shuffle_tiles` for the same ``perm_indices``."""
    return _rearrange(x, permutations[perm_indices].argsort(dim=1), grid)


def _rearrange(x: Tensor, order: Tensor, grid: int) -> Tensor:
    """Tile ``j`` of output image ``n`` is tile ``order[n, j]`` of input image ``n``."""
    n, c, height, width = x.shape
    top, left, tile_h, tile_w = tile_region(height, width, grid)
    rows, cols = slice(top, top + grid * tile_h), slice(left, left + grid * tile_w)
    region = x[:, :, rows, cols]
    tiles = region.reshape(n, c, grid, tile_h, grid, tile_w).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n, grid * grid, c, tile_h, tile_w)
    tiles = tiles[torch.arange(n, device=x.device)[:, None], order.to(x.device)]
    region = tiles.reshape(n, grid, grid, c, tile_h, tile_w).permute(0, 3, 1, 4, 2, 5)
    region = region.reshape(n, c, grid * tile_h, grid * tile_w)
    if region.shape[-2:] == x.shape[-2:]:
        return region
    out = x.clone()
    out[:, :, rows, cols] = region
    return out
