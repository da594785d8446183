"""Streaming images (dgmeta.data.streaming): same pixels as the disk cache, bounded memory, readahead."""

from __future__ import annotations

import gc
import importlib.util
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from dgmeta.data import InfiniteBatches, create_dataset, labels_of, load_images
from dgmeta.data.streaming import (
    STREAM_THRESHOLD,
    DecodedCache,
    ReadaheadBatches,
    StreamingImages,
    choose_cache,
    image_array,
    row_subset,
)
from dgmeta.errors import ConfigError, DataError
from dgmeta.training.distributed import make_batches
from fixtures_data import make_domainnet

REPO = Path(__file__).resolve().parents[1]


def _layout_module():
    spec = importlib.util.spec_from_file_location("domainnet_layout", REPO / "benchmarks" / "tools" / "domainnet_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def samples(tmp_path):
    dataset = create_dataset("domainnet", make_domainnet(tmp_path / "data", per_class=6, test_per_class=1))
    return dataset.samples("clipart", "test") + dataset.samples("sketch", "test")


def test_choose_cache_streams_only_large_lists_under_auto():
    assert choose_cache("auto", STREAM_THRESHOLD) == "disk"
    assert choose_cache("auto", STREAM_THRESHOLD + 1) == "stream"
    assert choose_cache("stream", 10) == "stream"
    assert choose_cache("disk", 10**7) == "disk"
    with pytest.raises(ConfigError, match="--cache"):
        choose_cache("memory", 10)


def test_streamed_pixels_equal_the_disk_cache(samples, tmp_path):
    disk = load_images(samples, 16, cache_dir=tmp_path / "cache", progress=False)
    stream = image_array(samples, 16, cache="stream")
    assert isinstance(stream, StreamingImages) and stream.shape == disk.shape and stream.dtype == disk.dtype
    np.testing.assert_array_equal(stream[3], disk[3])
    np.testing.assert_array_equal(stream[-1], disk[-1])
    np.testing.assert_array_equal(stream[2:9:3], disk[2:9:3])
    index = np.array([5, 0, 5, len(samples) - 1])
    np.testing.assert_array_equal(stream[index], disk[index])
    mask = np.arange(len(samples)) % 2 == 1
    np.testing.assert_array_equal(stream[mask], disk[mask])
    np.testing.assert_array_equal(np.asarray(stream), np.asarray(disk))
    # lazy views (used for DDP evaluation shards) read the same rows
    view = stream.subset(np.arange(1, len(samples), 2))
    np.testing.assert_array_equal(view[1:3], disk[1::2][1:3])
    np.testing.assert_array_equal(row_subset(disk, np.array([4, 1]))[:], disk[[4, 1]])
    with pytest.raises(IndexError):
        stream[np.array([len(samples)])]


def test_decoded_cache_is_bounded_and_evicts_least_recently_used():
    item = np.zeros(100, dtype=np.uint8)
    cache = DecodedCache(max_bytes=350)
    for key in "abc":
        cache.put(key, item.copy())
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", item.copy())
    assert cache.bytes <= 350 and len(cache) == 3
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None


def test_streaming_reuses_its_cache_within_budget(samples):
    cache = DecodedCache(max_bytes=5 * 3 * 16 * 16)  # five decoded images
    stream = StreamingImages(samples, 16, cache=cache)
    first = stream[np.arange(5)]
    hits = cache.hits
    np.testing.assert_array_equal(stream[np.arange(5)], first)
    assert cache.hits == hits + 5
    stream[np.arange(5, len(samples))]
    assert cache.bytes <= cache.max_bytes and len(cache) == 5


def test_missing_file_is_a_one_line_data_error(samples):
    stream = StreamingImages(samples, 16, cache=DecodedCache(1 << 20))
    Path(stream.path(2)).unlink()
    stream[np.array([0, 1])]
    with pytest.raises(DataError, match="image file missing"):
        stream[np.array([1, 2])]


def test_readahead_draws_the_same_batches_and_resumes_exactly(samples, tmp_path):
    labels = labels_of(samples)
    disk = load_images(samples, 16, cache_dir=tmp_path / "cache", progress=False)
    cache = DecodedCache(1 << 20)
    stream = StreamingImages(samples, 16, cache=cache)
    plain = InfiniteBatches(disk, labels, 5, seed=3)
    ahead = make_batches(stream, labels, 5, seed=3)
    assert isinstance(ahead, ReadaheadBatches)
    for _ in range(4):  # crosses an epoch boundary (18 images, 5 per batch)
        (xa, ya), (xb, yb) = plain.next(), ahead.next()
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    # the next batch is decoded in the background while this one trains
    upcoming = ahead._ahead
    deadline = time.time() + 10
    while any(cache.get((stream._decoder.token, int(i)), count=False) is None for i in upcoming) and time.time() < deadline:
        time.sleep(0.01)
    hits = cache.hits
    ahead.next()
    assert cache.hits - hits == len(upcoming)

    state = ahead.state_dict()
    expected = [ahead.next()[1].numpy() for _ in range(3)]
    resumed = make_batches(StreamingImages(samples, 16, cache=DecodedCache(1 << 20)), labels, 5, seed=99)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate([resumed.next()[1].numpy() for _ in range(3)]), np.concatenate(expected))


def _stream_peak_bytes(data_root: Path, image_size: int, cache: DecodedCache) -> int:
    """Peak Python-heap bytes of streaming training batches from one DomainNet train list."""
    samples = create_dataset("domainnet", data_root).samples("clipart", "train")
    gc.collect()
    tracemalloc.start()
    try:
        images = StreamingImages(samples, image_size, cache=cache)
        batches = make_batches(images, labels_of(samples), 32, seed=0)
        for _ in range(12):
            batches.next()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    layout = _layout_module()
    size, budget = 64, 4 << 20
    peaks = {}
    for entries in (10_000, 100_000):
        root = layout.make_domainnet_layout(tmp_path / f"dn{entries}", entries, domains=("clipart", "sketch"))
        cache = DecodedCache(budget)
        peaks[entries] = _stream_peak_bytes(root, size, cache)
        assert cache.bytes <= budget
    train_entries = {n: int(n * 0.9) for n in peaks}  # 10% of each train list is held out for val
    extra = train_entries[100_000] - train_entries[10_000]
    held_in_memory = extra * 3 * size * size  # what keeping the extra images decoded would take
    growth = peaks[100_000] - peaks[10_000]
    # what grows is the packed file list (~100-200 bytes per entry), not the images (12 KiB each)
    assert growth < 0.05 * held_in_memory, f"{growth / 1e6:.1f} MB for {extra} more entries"
    assert peaks[100_000] < budget + 0.1 * held_in_memory
