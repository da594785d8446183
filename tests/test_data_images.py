"""Decoded-image cache: contents, hits, rebuilds on change or corruption, decode errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fixtures_data import class_colour, make_pacs, write_image
from PIL import Image

import dgmeta.data.images as images_module
from dgmeta.data import Sample, create_dataset, labels_of, load_images
from dgmeta.errors import DataError


@pytest.fixture
def pacs_samples(tmp_path):
    ds = create_dataset("pacs", make_pacs(tmp_path / "data", per_class=3))
    return [s for d in ds.domains for s in ds.samples(d, "test")]


def cache_files(cache):
    return sorted(p.name for p in (cache / "images").iterdir())


def test_images_are_decoded_resized_and_in_sample_order(pacs_samples, tmp_path):
    array = load_images(pacs_samples, 16, cache_dir=tmp_path / "cache", progress=False)
    assert array.shape == (len(pacs_samples), 3, 16, 16) and array.dtype == np.uint8
    assert isinstance(array, np.memmap)
    for row, sample in zip(array, pacs_samples):
        assert tuple(row[:, 5, 5]) == class_colour(sample.label)
    assert labels_of(pacs_samples).dtype == np.int64
    assert labels_of(pacs_samples).tolist() == [s.label for s in pacs_samples]


def test_default_cache_dir_comes_from_the_environment(pacs_samples, tmp_path, monkeypatch):
    monkeypatch.setenv("DGMETA_CACHE", str(tmp_path / "envcache"))
    load_images(pacs_samples[:4], 8, progress=False)
    assert len(list((tmp_path / "envcache" / "images").glob("*.npy"))) == 1


def test_second_load_is_a_cache_hit(pacs_samples, tmp_path, monkeypatch):
    first = np.array(load_images(pacs_samples, 8, cache_dir=tmp_path / "cache", progress=False))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(images_module, "open_rgb", no_decoding)
    second = load_images(pacs_samples, 8, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(first, second)
    assert not any(name.endswith(".tmp") for name in cache_files(tmp_path / "cache"))


def test_changed_file_or_size_gets_a_new_cache(pacs_samples, tmp_path):
    cache = tmp_path / "cache"
    load_images(pacs_samples, 8, cache_dir=cache, progress=False)
    load_images(pacs_samples, 12, cache_dir=cache, progress=False)
    assert len([n for n in cache_files(cache) if n.endswith(".npy")]) == 2
    target = pacs_samples[0].path
    write_image(target, (255, 255, 255))
    os.utime(target, ns=(os.stat(target).st_atime_ns, os.stat(target).st_mtime_ns + 10**9))
    array = load_images(pacs_samples, 8, cache_dir=cache, progress=False)
    assert tuple(array[0, :, 3, 3]) == (255, 255, 255)
    assert tuple(array[1, :, 3, 3]) == class_colour(pacs_samples[1].label)


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "wrong_key", "no_sidecar"])
def test_corrupt_or_mismatched_cache_is_rebuilt_not_used(pacs_samples, tmp_path, damage):
    cache = tmp_path / "cache"
    good = np.array(load_images(pacs_samples, 8, cache_dir=cache, progress=False))
    npy = next((cache / "images").glob("*.npy"))
    meta = npy.with_suffix(".json")
    if damage == "flip_bytes":
        data = bytearray(npy.read_bytes())
        data[-10:] = bytes(255 - b for b in data[-10:])
        npy.write_bytes(bytes(data))
    elif damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:-100])
    elif damage == "wrong_key":
        info = json.loads(meta.read_text())
        info["key"] = "0" * 64
        meta.write_text(json.dumps(info))
    else:
        meta.unlink()
    rebuilt = load_images(pacs_samples, 8, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(rebuilt, good)


def test_undecodable_image_names_the_file_and_leaves_no_cache(pacs_samples, tmp_path):
    broken = pacs_samples[5].path
    broken.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=f"cannot decode image {broken}"):
        load_images(pacs_samples, 8, cache_dir=tmp_path / "cache", progress=True)
    assert cache_files(tmp_path / "cache") == []


def test_missing_image_is_a_data_error(pacs_samples, tmp_path):
    pacs_samples[2].path.unlink()
    with pytest.raises(DataError, match=f"image file missing: {pacs_samples[2].path}"):
        load_images(pacs_samples, 8, cache_dir=tmp_path / "cache", progress=False)


def test_transparency_grayscale_and_non_square_images(tmp_path):
    rgba = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 10, 10))
    rgba.save(tmp_path / "alpha.png")
    Image.new("L", (6, 30), 77).save(tmp_path / "gray.jpg")
    samples = [Sample(tmp_path / "alpha.png", 0), Sample(tmp_path / "gray.jpg", 1)]
    array = load_images(samples, 10, cache_dir=tmp_path / "cache", progress=False)
    assert array.shape == (2, 3, 10, 10)
    assert tuple(array[0, :, 5, 1]) == (255, 0, 0)  # opaque left half kept
    assert tuple(array[0, :, 5, 8]) == (255, 255, 255)  # transparent right half on white
    assert np.all(np.abs(array[1].astype(int) - 77) <= 2)


def test_empty_sample_list_gives_an_empty_array(tmp_path):
    assert load_images([], 8, cache_dir=tmp_path / "cache", progress=False).shape == (0, 3, 8, 8)
