"""Decoded-image cache: every image is decoded once per size into a memory-mapped ``.npy``.

A cache file is named by a key over the sample list (paths relative to their common folder,
file sizes, mtimes) and the image size; a sidecar ``.json`` holds the full key and a CRC32 of
the array. A cache whose sidecar is missing, whose key differs or whose bytes do not match the
CRC is rebuilt, never used. Files are written to a temporary name and renamed into place, so
a crash or a concurrent run never leaves a half-written cache behind a valid name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from dgmeta.data.dataset import Sample
from dgmeta.data.parallel import run_chunked
from dgmeta.errors import DataError

#: bump when decoding changes (resampling filter, alpha handling) so old caches are not reused
CACHE_FORMAT = 1
_CRC_BLOCK = 64 << 20


def default_cache_dir() -> Path:
    return Path(os.environ.get("DGMETA_CACHE") or Path.home() / ".cache" / "dgmeta").expanduser()


def labels_of(samples: Sequence[Sample]) -> np.ndarray:
    return np.fromiter((sample.label for sample in samples), dtype=np.int64, count=len(samples))


def open_rgb(path: Path, size: int | None = None) -> Image.Image:
    """``path`` as an RGB image (transparency composited on white, as sketches are drawn on white),
    resized to ``size`` x ``size`` with an antialiasing filter when ``size`` is given."""
    try:
        with Image.open(path) as image:
            if size is not None:
                image.draft("RGB", (size, size))  # JPEG: cheap DCT-domain downscale, never below size
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            else:
                rgb = image.convert("RGB")
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            return rgb
    except FileNotFoundError:
        raise DataError(f"image file missing: {path}", "restore it, or run `dgmeta data verify` to list every problem") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}", "replace or remove the file, then run `dgmeta data verify`") from None


def _cache_key(samples: Sequence[Sample], image_size: int) -> str:
    paths = [os.fspath(sample.path) for sample in samples]
    base = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    digest = hashlib.sha256(f"dgmeta-images v{CACHE_FORMAT} size={image_size} n={len(paths)}\n".encode())
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise DataError(f"image file missing: {path}", "restore it, or run `dgmeta data verify` to list every problem") from None
        digest.update(f"{os.path.relpath(path, base)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _crc(array: np.ndarray) -> int:
    flat = array.reshape(-1)
    crc = 0
    for start in range(0, flat.size, _CRC_BLOCK):
        crc = zlib.crc32(flat[start : start + _CRC_BLOCK], crc)
    return crc


def _load_valid(npy: Path, meta: Path, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None when it is absent, stale or corrupt."""
    try:
        info = json.loads(meta.read_text())
        if info.get("key") != key or tuple(info.get("shape", ())) != shape:
            return None
        array = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if array.shape != shape or array.dtype != np.uint8 or _crc(array) != info.get("crc32"):
        return None
    return array


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _build(samples: Sequence[Sample], image_size: int, npy: Path, meta: Path, key: str, progress: bool) -> None:
    shape = (len(samples), 3, image_size, image_size)
    fd, tmp = tempfile.mkstemp(dir=npy.parent, prefix=npy.stem + ".", suffix=".npy.tmp")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)

        def decode(index: int, sample: Sample) -> None:
            out[index] = np.asarray(open_rgb(sample.path, image_size)).transpose(2, 0, 1)

        run_chunked(samples, decode, f"decoding {len(samples):,} images at {image_size}px", progress)
        out.flush()
        crc = _crc(out)
        del out
        os.replace(tmp, npy)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _atomic_write_text(meta, json.dumps({"key": key, "shape": list(shape), "crc32": crc, "format": CACHE_FORMAT}))


def load_images(samples: Sequence[Sample], image_size: int, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> np.ndarray:
    """uint8 ``[N, 3, S, S]`` images of ``samples`` (RGB, resized to S x S), memory-mapped from the cache."""
    if image_size <= 0:
        raise DataError(f"image size must be positive, got {image_size}", "pass e.g. --image-size 128")
    shape = (len(samples), 3, image_size, image_size)
    if not samples:
        return np.zeros(shape, dtype=np.uint8)
    key = _cache_key(samples, image_size)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / "images"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the image cache folder {folder}: {exc.strerror}", "set DGMETA_CACHE or --cache-dir to a writable folder") from None
    stem = f"{image_size}px-{len(samples)}-{key[:32]}"
    npy, meta = folder / f"{stem}.npy", folder / f"{stem}.json"
    array = _load_valid(npy, meta, key, shape)
    if array is None:
        _build(samples, image_size, npy, meta, key, progress)
        array = _load_valid(npy, meta, key, shape)
        if array is None:  # only a concurrent writer racing with a different result could get here
            raise DataError(f"image cache {npy} changed while it was being written", "run again; if it persists, delete the file")
    return array
