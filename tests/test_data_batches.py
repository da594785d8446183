"""InfiniteBatches: epochs without replacement, seeding, exact resume; augment_batch properties."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from dgmeta.data import AugmentConfig, InfiniteBatches, augment_batch
from dgmeta.errors import ConfigError


def numbered_images(n: int, size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Image i is filled with the value i, and its label is i % 3."""
    images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], 3 * size * size, axis=1).reshape(n, 3, size, size)
    return images, np.arange(n) % 3


def ids(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].tolist()


def test_batches_have_the_right_types_and_matching_labels():
    images, labels = numbered_images(10)
    x, y = InfiniteBatches(images, labels, batch_size=4, seed=0).next()
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 4, 4)
    assert y.dtype == torch.int64 and y.tolist() == [i % 3 for i in ids(x)]


@pytest.mark.parametrize("n, batch", [(10, 3), (5, 8)])
def test_every_sample_once_per_epoch_even_across_boundaries(n, batch):
    images, labels = numbered_images(n)
    sampler = InfiniteBatches(images, labels, batch_size=batch, seed=1)
    stream = [i for _ in range(4 * n) for i in ids(sampler.next()[0])]  # exactly 4 * batch epochs
    epochs = [stream[k : k + n] for k in range(0, len(stream), n)]
    assert len(epochs) >= 3
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled per epoch


def test_seeded_reproducible_and_seed_sensitive():
    images, labels = numbered_images(20)
    a, b, c = (InfiniteBatches(images, labels, 5, seed) for seed in (7, 7, 8))
    run_a = [ids(a.next()[0]) for _ in range(8)]
    assert run_a == [ids(b.next()[0]) for _ in range(8)]
    assert run_a != [ids(c.next()[0]) for _ in range(8)]


def test_resume_continues_with_exactly_the_same_batches():
    images, labels = numbered_images(11)
    original = InfiniteBatches(images, labels, 4, seed=3)
    for _ in range(5):  # stop mid-epoch, after an epoch boundary
        original.next()
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = InfiniteBatches(images, labels, 4, seed=999)
    resumed.load_state_dict(state)
    for _ in range(10):
        (xa, ya), (xb, yb) = original.next(), resumed.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert resumed.epoch == original.epoch


def test_resume_on_a_different_dataset_is_refused():
    images, labels = numbered_images(11)
    state = InfiniteBatches(images, labels, 4, seed=0).state_dict()
    other = InfiniteBatches(*numbered_images(12), 4, seed=0)
    with pytest.raises(ConfigError, match="saved for 11 samples"):
        other.load_state_dict(state)


def test_works_on_a_memmap(tmp_path):
    images, labels = numbered_images(9)
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    x, y = InfiniteBatches(mapped, labels, 6, seed=0).next()
    assert y.tolist() == [i % 3 for i in ids(x)]


# --------------------------------------------------------------------------- augmentation

NEUTRAL = AugmentConfig.neutral()


def test_augment_keeps_shape_and_range():
    x = torch.rand(16, 3, 24, 24)
    y = augment_batch(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(x, y)


def test_neutral_parameters_leave_the_batch_unchanged():
    x = torch.rand(6, 3, 16, 16)
    torch.testing.assert_close(augment_batch(x, torch.Generator().manual_seed(0), NEUTRAL), x, atol=1e-5, rtol=0)


def test_flip_really_flips():
    x = torch.rand(4, 3, 16, 16)
    y = augment_batch(x, torch.Generator().manual_seed(0), dataclasses.replace(NEUTRAL, flip_p=1.0))
    torch.testing.assert_close(y, x.flip(-1), atol=1e-5, rtol=0)


def test_seeded_augmentation_is_reproducible():
    x = torch.rand(8, 3, 16, 16)
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_crop_zooms_in_by_the_side_fraction():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(8, 3, 64, 64).contiguous()
    config = dataclasses.replace(NEUTRAL, scale=(0.49, 0.49))  # square crops of 0.7 x the side
    y = augment_batch(ramp, torch.Generator().manual_seed(0), config)
    spans = y[:, 0, 0, -1] - y[:, 0, 0, 0]
    torch.testing.assert_close(spans, torch.full((8,), 0.7 * 63 / 63), atol=0.02, rtol=0)
    assert y[:, 0, 0, 0].std() > 0.01  # crops land at different places


def test_grayscale_and_brightness_act_per_image():
    x = torch.rand(32, 3, 8, 8) * 0.5
    gray = augment_batch(x, torch.Generator().manual_seed(0), dataclasses.replace(NEUTRAL, grayscale_p=1.0))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    bright = augment_batch(x, torch.Generator().manual_seed(0), dataclasses.replace(NEUTRAL, brightness=0.3))
    ratio = bright / x
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-4)
    assert per_image[:, 0].min() >= 0.7 - 1e-4 and per_image[:, 0].max() <= 1.3 + 1e-4
    assert per_image[:, 0].std() > 0.05


def test_hue_rotation_keeps_gray_pixels_gray_and_moves_colours():
    x = torch.rand(8, 3, 8, 8)
    x[:, :, 0, 0] = 0.5
    y = augment_batch(x, torch.Generator().manual_seed(0), dataclasses.replace(NEUTRAL, hue=0.2))
    torch.testing.assert_close(y[:, :, 0, 0], torch.full((8, 3), 0.5), atol=1e-4, rtol=0)
    assert (y - x).abs().max() > 0.05
