import pytest
import torch

from dgmeta.errors import ConfigError
from dgmeta.learners.jigsaw import (
    jigsaw_permutations,
    minimum_hamming_distance,
    shuffle_tiles,
    tile_region,
    unshuffle_tiles,
)

# the table documented in dgmeta/learners/jigsaw.py (grid=3)
DOCUMENTED_MIN_HAMMING = {8: 9, 18: 8, 30: 7, 75: 7, 100: 6}


@pytest.mark.parametrize("num_permutations", sorted(DOCUMENTED_MIN_HAMMING))
@pytest.mark.parametrize("seed", [0, 1])
def test_permutation_set_is_valid_and_far_apart(num_permutations, seed):
    perms = jigsaw_permutations(num_permutations, grid=3, seed=seed)
    assert perms.shape == (num_permutations + 1, 9)
    assert torch.equal(perms[0], torch.arange(9))  # class 0 = unshuffled
    assert torch.equal(perms.sort(dim=1).values, torch.arange(9).expand_as(perms))  # each a permutation
    assert len({tuple(p.tolist()) for p in perms}) == len(perms)  # unique
    assert minimum_hamming_distance(perms) >= DOCUMENTED_MIN_HAMMING[num_permutations]


def test_permutation_set_is_seeded_and_cached_copies_are_independent():
    a = jigsaw_permutations(10, seed=3)
    assert torch.equal(a, jigsaw_permutations(10, seed=3))
    assert not torch.equal(a, jigsaw_permutations(10, seed=4))
    a[1] = 0  # mutating a returned set must not corrupt the cache
    assert torch.equal(jigsaw_permutations(10, seed=3)[1].sort().values, torch.arange(9))


def test_max_min_selection_beats_random_permutations():
    rng = torch.Generator().manual_seed(0)
    random_set = torch.stack([torch.arange(9)] + [torch.randperm(9, generator=rng) for _ in range(30)])
    assert minimum_hamming_distance(jigsaw_permutations(30)) > minimum_hamming_distance(random_set)


def test_other_grids_and_invalid_sizes():
    perms = jigsaw_permutations(5, grid=2)
    assert perms.shape == (6, 4) and minimum_hamming_distance(perms) >= 2
    four = jigsaw_permutations(3, grid=4)  # 16! candidates: a seeded sample
    assert four.shape == (4, 16) and torch.equal(four.sort(dim=1).values, torch.arange(16).expand(4, 16))
    with pytest.raises(ConfigError, match="num_permutations=24"):
        jigsaw_permutations(24, grid=2)  # only 4! - 1 = 23 non-identity permutations exist
    with pytest.raises(ConfigError, match="grid=1"):
        jigsaw_permutations(3, grid=1)


def _tiles(x, grid):
    top, left, th, tw = tile_region(x.shape[-2], x.shape[-1], grid)
    return [
        x[:, :, top + r * th : top + (r + 1) * th, left + c * tw : left + (c + 1) * tw]
        for r in range(grid)
        for c in range(grid)
    ]


@pytest.mark.parametrize("size", [(32, 32), (33, 33), (64, 64), (31, 40), (16, 17)])
def test_shuffle_moves_tiles_and_inverse_reassembles(size):
    torch.manual_seed(0)
    perms = jigsaw_permutations(30)
    x = torch.rand(5, 3, *size)
    idx = torch.tensor([0, 1, 7, 30, 15])
    shuffled = shuffle_tiles(x, idx, perms)
    assert shuffled.shape == x.shape
    assert torch.equal(shuffled[0], x[0])  # index 0 = identity
    for n in range(1, 5):
        assert not torch.equal(shuffled[n], x[n])
        before, after = _tiles(x[n : n + 1], 3), _tiles(shuffled[n : n + 1], 3)
        for j in range(9):
            assert torch.equal(after[j], before[perms[idx[n], j]])
    # pixels outside the tiled region (sizes not divisible by 3) stay where they were
    top, left, th, tw = tile_region(*size, 3)
    outside = torch.ones(size, dtype=torch.bool)
    outside[top : top + 3 * th, left : left + 3 * tw] = False
    assert torch.equal(shuffled[..., outside], x[..., outside])
    assert torch.equal(unshuffle_tiles(shuffled, idx, perms), x)


def test_shuffle_handles_channels_last_and_keeps_gradients():
    perms = jigsaw_permutations(4)
    x = torch.rand(2, 3, 24, 24).contiguous(memory_format=torch.channels_last).requires_grad_()
    idx = torch.tensor([2, 3])
    out = shuffle_tiles(x, idx, perms)
    assert torch.equal(unshuffle_tiles(out, idx, perms), x)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # a permutation moves every pixel exactly once


def test_too_small_images_are_refused():
    with pytest.raises(ConfigError, match="too small"):
        shuffle_tiles(torch.rand(1, 3, 2, 2), torch.tensor([1]), jigsaw_permutations(2))
