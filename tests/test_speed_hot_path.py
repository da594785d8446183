"""No per-sample Python on the training hot path.

Timing tests are flaky on a shared machine, so this counts Python function calls instead: drawing
a batch (sampler + augmentation), and one training step of every learner and meta mode, must
make as many Python calls for 16 images per domain as for 4. A loop over samples anywhere in
that path would add calls for every extra image.
"""

from __future__ import annotations

import cProfile
import pstats

import numpy as np
import pytest
import torch

from dgmeta.data import InfiniteBatches, augment_batch
from dgmeta.learners.jigsaw import jigsaw_permutations, shuffle_tiles

SMALL, LARGE = 4, 16
SIZE = 32


def python_calls(fn) -> int:
    """Calls of Python-level functions made while running ``fn`` (cProfile: low overhead)."""
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    stats = pstats.Stats(profiler).stats
    return sum(total for (filename, _, _), (_, total, _, _, _) in stats.items() if filename != "~")  # "~": C built-ins


def assert_independent_of_batch_size(make_fn):
    """``make_fn(n)`` returns a zero-argument callable processing ``n`` images per domain."""
    small, large = make_fn(SMALL), make_fn(LARGE)
    small(), large()  # warm-up: lazy imports and caches
    counts = python_calls(small), python_calls(large)
    assert counts[1] <= counts[0] * 1.02 + 5, f"{counts[0]} Python calls for {SMALL} images, {counts[1]} for {LARGE}"


def _flip(image: torch.Tensor) -> torch.Tensor:
    return torch.flip(image, dims=(2,))


def test_the_check_catches_a_per_sample_loop():
    def make(n):
        x = torch.rand(n, 3, 8, 8)
        return lambda: torch.stack([_flip(image) for image in x])

    with pytest.raises(AssertionError, match="Python calls"):
        assert_independent_of_batch_size(make)


def test_drawing_and_augmenting_a_batch():
    images = np.random.default_rng(0).integers(0, 255, (200, 3, SIZE, SIZE), dtype=np.uint8)
    labels = np.arange(200) % 5

    def make(n):
        samplers = [InfiniteBatches(images, labels, n, seed=i) for i in range(3)]
        generator = torch.Generator().manual_seed(0)

        def draw():
            xs = [s.next()[0] for s in samplers]
            augment_batch(torch.cat(xs).float().div_(255), generator)

        return draw

    assert_independent_of_batch_size(make)


def test_jigsaw_tile_shuffling():
    permutations = jigsaw_permutations(30, 3, 0)

    def make(n):
        x = torch.rand(n, 3, SIZE, SIZE)
        index = torch.randint(0, 31, (n,))
        return lambda: shuffle_tiles(x, index, permutations, 3)

    assert_independent_of_batch_size(make)


CASES = [
    ("erm", "none", "dg", {}),
    ("dann", "none", "msda", {}),
    ("mcd", "none", "msda", {"num_k": 2}),
    ("jigen", "none", "dg", {}),
    ("erm", "init", "dg", {"meta_order": 1}),
    ("erm", "init", "dg", {"meta_order": 2}),
    ("erm", "critic", "dg", {}),
]


@pytest.mark.parametrize("base,meta,protocol,overrides", CASES, ids=[f"{c[0]}-{c[1]}-{c[3].get('meta_order', '')}" for c in CASES])
def test_training_step(base, meta, protocol, overrides):
    from dgmeta.hparams import apply_overrides, default_hparams
    from dgmeta.learners import Batch, LearnerContext, create_learner
    from dgmeta.meta import create_stepper
    from dgmeta.models import create_network

    torch.manual_seed(0)
    hparams = apply_overrides(default_hparams(base, meta), overrides)
    learner = create_learner(base, create_network("test_efficientnet", 3, "none"), LearnerContext(3, 3, protocol, 100), hparams)
    stepper = create_stepper(meta, learner, hparams, 100, 3, 0)

    def make(n):
        batch = Batch(
            torch.rand(3 * n, 3, SIZE, SIZE), torch.arange(3 * n) % 3, torch.arange(3 * n) // n,
            torch.rand(n, 3, SIZE, SIZE) if protocol == "msda" else None,
        )
        return lambda: stepper.step(batch)

    assert_independent_of_batch_size(make)
