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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from dgmeta.data.dataset import Sample
from dgmeta.data.parallel import run_chunked
from dgmeta.errors import DataError

#: bump when decoding changes (resampling filter, alpha handling) so old caches are not reused
CACHE_FORMAT = 2  # 2: EXIF orientation applied, 16/32-bit and float images scaled from their range
_CRC_BLOCK = 64 << 20


def default_cache_dir() -> Path:
    return Path(os.environ.get("DGMETA_CACHE") or Path.home() / ".cache" / "dgmeta").expanduser()


def labels_of(samples: Sequence[Sample]) -> np.ndarray:
    return np.fromiter((sample.label for sample in samples), dtype=np.int64, count=len(samples))


#: PIL modes with transparency: composited on white, as sketches and clip art are drawn on white
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
#: PIL modes whose values are wider than 8 bits (one channel): scaled into 0..255, not clipped
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


@dataclass(frozen=True)
class Decoded:
    """What the network is fed (``image``, 8-bit RGB) and where it came from."""

    image: Image.Image
    mode: str  # the file's PIL mode
    rotated: bool  # an EXIF orientation other than "upright" was applied
    scaling: str | None = None  # wide and float modes: the value range mapped onto 0..255


def open_rgb(path: Path, size: int | None = None) -> Image.Image:
    """``path`` as an 8-bit RGB image, upright (EXIF orientation), resized to ``size`` x ``size``
    with an antialiasing filter when ``size`` is given; see :func:`decode_rgb`."""
    return decode_rgb(path, size).image


def decode_rgb(path: Path, size: int | None = None) -> Decoded:
    """Every PIL mode a dataset can hold, converted with its real value range: transparency on
    white, palettes and CMYK through PIL, 16/32-bit integer and float images scaled from their
    range to 0..255 (a plain RGB conversion clips them white or rounds them to black)."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if size is not None:
                image.draft("RGB", (size, size))  # JPEG: cheap DCT-domain downscale, never below size
            orientation = image.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(image) if orientation not in (1, None) else image
            rgb, scaling = _to_rgb(upright, path)
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            return Decoded(rgb, mode, orientation not in (1, None), scaling)
    except FileNotFoundError:
        raise DataError(f"image file missing: {path}", "restore it, or run `dgmeta data verify` to list every problem") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}", "replace or remove the file, then run `dgmeta data verify`") from None


def describe_mode(mode: str, scalings: dict[str, int] | None = None) -> str:
    """A PIL mode and what decoding does with it, for `dgmeta data verify`; ``scalings`` counts
    the value-range rules its files took (see :func:`_scale_to_8_bits`)."""
    if mode in _ALPHA_MODES:
        return f"{mode} (transparency on white)"
    if mode in _WIDE_MODES:
        rules = ", ".join(f"{n:,} {rule}" for rule, n in sorted((scalings or {}).items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{mode} ({'float' if mode == 'F' else 'wide integer'} gray, scaled from its range" + (f": {rules})" if rules else ")")
    if mode == "P":
        return "P (palette)"
    if mode in ("1", "L"):
        return f"{mode} (gray)"
    return mode


def _to_rgb(image: Image.Image, path: Path) -> tuple[Image.Image, str | None]:
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb, None
    if image.mode in _WIDE_MODES:
        gray, scaling = _scale_to_8_bits(np.asarray(image), image.mode == "F", path)
        return Image.fromarray(gray, "L").convert("RGB"), scaling
    if image.mode in _PLAIN_MODES:
        return image.convert("RGB"), None
    raise DataError(
        f"cannot decode image {path}: PIL mode {image.mode!r} is not supported",
        f"convert the file to 8-bit RGB or grayscale (supported modes: {', '.join(_PLAIN_MODES + _ALPHA_MODES + _WIDE_MODES)})",
    )


def _scale_to_8_bits(values: np.ndarray, float_mode: bool, path: Path) -> tuple[np.ndarray, str]:
    """One channel of a wide integer or float image as uint8, from its real range. Integers are
    scaled by the smallest bit depth that holds their maximum (12-bit data in a 16-bit file fills
    0..4095, so it is not darkened 16x), which keeps brightness comparable between images of one
    camera; floats in [0, 1] are fractions of white; values already in 0..255 stay; anything else
    (negative values, floats above 255) is stretched min..max. Also returns the rule applied, in
    words, for `dgmeta data verify`."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"cannot decode image {path}: it holds NaN or infinite pixel values", "replace the file, or write finite pixel values")
    low, high = float(values.min()), float(values.max())
    if float_mode and low >= 0 and high <= 1:
        scaled, rule = values * 255.0, "0..1 scaled to 0..255"
    elif low >= 0 and high <= 255:
        scaled, rule = values, "values within 0..255 kept"
    elif low >= 0 and not float_mode:
        bits = int(high).bit_length()
        scaled, rule = values * (255.0 / (2**bits - 1)), f"{bits}-bit 0..{2**bits - 1} scaled to 0..255"
    elif high > low:
        scaled, rule = (values - low) * (255.0 / (high - low)), "stretched from its min..max"
    else:  # one negative or huge value everywhere: no contrast to keep
        scaled, rule = np.zeros_like(values), "one value everywhere, fed as black"
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8), rule


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
