"""Streaming images for datasets too large for the decoded-image cache (DomainNet: 586k images).

:class:`StreamingImages` looks like the uint8 ``[N, 3, S, S]`` array that
:func:`dgmeta.data.images.load_images` returns (``len``, ``shape``, ``dtype``, integer / slice /
index-array reads), but decodes each image from its file when it is read. Decoded images live in
one LRU cache per process, bounded in bytes (``DGMETA_STREAM_CACHE_MB``, default 512 MiB) and
shared by every streamed list, so memory does not grow with the number of images. The sample
list itself is packed into one bytes buffer (about the length of a path per image, not a Python
``Path`` object each).

Decoding runs in a small thread pool (PIL releases the GIL). :class:`ReadaheadBatches` wraps a
batch sampler so that while one batch trains, the files of the next one are already decoding.

Which lists stream: :func:`choose_cache` -- ``disk`` always uses the decoded-image cache,
``stream`` always streams, ``auto`` (the default) streams a list of more than
:data:`STREAM_THRESHOLD` images (e.g. DomainNet's ``real``/``quickdraw``/``painting`` train
lists) and caches smaller ones on disk (all of PACS and Office-Home).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from dgmeta.data.dataset import Sample
from dgmeta.data.images import load_images, open_rgb
from dgmeta.data.parallel import default_workers
from dgmeta.errors import ConfigError, DataError

CACHE_MODES = ("auto", "disk", "stream")
#: image lists longer than this stream under ``cache="auto"``; at 128 px the disk cache of such a
#: list would take more than 2.4 GB, and decoding it up front more than a few minutes
STREAM_THRESHOLD = 50_000
DEFAULT_CACHE_MB = 512


def choose_cache(mode: str, num_images: int) -> str:
    """``disk`` or ``stream`` for an image list of ``num_images`` under ``--cache mode``."""
    if mode not in CACHE_MODES:
        raise ConfigError(f"unknown --cache {mode!r}", f"choose one of: {', '.join(CACHE_MODES)}")
    if mode == "auto":
        return "stream" if num_images > STREAM_THRESHOLD else "disk"
    return mode


def image_array(samples: Sequence[Sample], image_size: int, cache: str = "auto", cache_dir=None, progress: bool = True):
    """The images of ``samples``: a memory-mapped decoded cache, or :class:`StreamingImages`."""
    if choose_cache(cache, len(samples)) == "stream":
        return StreamingImages(samples, image_size)
    return load_images(samples, image_size, cache_dir=cache_dir, progress=progress)


def cache_budget_bytes() -> int:
    text = os.environ.get("DGMETA_STREAM_CACHE_MB", str(DEFAULT_CACHE_MB))
    try:
        megabytes = float(text)
    except ValueError:
        raise ConfigError(f"DGMETA_STREAM_CACHE_MB={text!r} is not a number", "set it to a size in MiB, e.g. 512") from None
    if megabytes < 0:
        raise ConfigError(f"DGMETA_STREAM_CACHE_MB={text} is negative", "set it to a size in MiB, e.g. 512")
    return int(megabytes * (1 << 20))


class DecodedCache:
    """A thread-safe LRU of decoded images, bounded by the total bytes held."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key, count: bool = True) -> np.ndarray | None:
        """The cached value (marked most recently used), or None; ``count`` feeds :attr:`hits`/:attr:`misses`."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            if count:
                self.hits += value is not None
                self.misses += value is None
            return value

    def put(self, key, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._items[key] = value
            self.bytes += value.nbytes
            while self.bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0


class _Decoder:
    """What every view of one streamed list shares: packed paths, the cache and in-flight decodes."""

    _ids = itertools.count()

    def __init__(self, samples: Sequence[Sample], image_size: int, cache: DecodedCache, pool: ThreadPoolExecutor):
        paths = [os.fspath(sample.path) for sample in samples]
        # the dataset folder is stored once, not once per image
        prefix = os.path.commonprefix(paths) if paths else ""
        self._prefix = prefix[: prefix.rfind(os.sep) + 1]
        encoded = [os.fsencode(path[len(self._prefix) :]) for path in paths]
        del paths
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(path) for path in encoded], out=self._offsets[1:])
        self._blob = b"".join(encoded)
        del encoded
        self.image_size = image_size
        self.cache = cache
        self.pool = pool
        self.token = next(self._ids)  # cache keys must not collide between lists (``id`` may be reused)
        self._inflight: dict[int, Future] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def path(self, index: int) -> str:
        return self._prefix + os.fsdecode(self._blob[self._offsets[index] : self._offsets[index + 1]])

    def _decode(self, index: int) -> np.ndarray:
        image = np.ascontiguousarray(np.asarray(open_rgb(self.path(index), self.image_size)).transpose(2, 0, 1))
        self.cache.put((self.token, index), image)
        return image

    def _decode_and_release(self, index: int) -> np.ndarray:
        try:
            return self._decode(index)
        finally:
            with self._lock:
                self._inflight.pop(index, None)

    def submit(self, index: int) -> Future | None:
        """Start decoding ``index`` in the background unless it is cached or already under way."""
        if self.cache.get((self.token, index), count=False) is not None:
            return None
        with self._lock:
            future = self._inflight.get(index)
            if future is None:
                future = self.pool.submit(self._decode_and_release, index)
                self._inflight[index] = future
            return future

    def read(self, indices: np.ndarray) -> np.ndarray:
        size = self.image_size
        out = np.empty((len(indices), 3, size, size), dtype=np.uint8)
        pending: list[tuple[int, Future]] = []
        for row, index in enumerate(indices.tolist()):
            cached = self.cache.get((self.token, index))
            if cached is not None:
                out[row] = cached
                continue
            future = self.submit(index)
            if future is not None:
                pending.append((row, future))
            else:  # finished between the two look-ups (and, rarely, evicted again since)
                cached = self.cache.get((self.token, index), count=False)
                out[row] = cached if cached is not None else self._decode(index)
        for row, future in pending:
            out[row] = future.result()
        return out


_shared_lock = threading.Lock()
_shared: dict[str, Any] = {}


def shared_cache() -> DecodedCache:
    """The process-wide decoded-image cache (one budget for every streamed list)."""
    with _shared_lock:
        if "cache" not in _shared:
            _shared["cache"] = DecodedCache(cache_budget_bytes())
        return _shared["cache"]


def _shared_pool() -> ThreadPoolExecutor:
    with _shared_lock:
        if "pool" not in _shared:
            _shared["pool"] = ThreadPoolExecutor(max_workers=default_workers(), thread_name_prefix="dgmeta-decode")
        return _shared["pool"]


class StreamingImages:
    """uint8 ``[N, 3, S, S]`` images of ``samples``, decoded on read; see the module docstring.

    Reads return numpy arrays (``images[i]`` is ``[3, S, S]``, ``images[a:b]`` and
    ``images[index_array]`` are ``[k, 3, S, S]``); :meth:`subset` returns a lazy view.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, samples: Sequence[Sample], image_size: int, cache: DecodedCache | None = None, *, _decoder: _Decoder | None = None, _rows: np.ndarray | None = None):
        if image_size <= 0:
            raise DataError(f"image size must be positive, got {image_size}", "pass e.g. --image-size 128")
        self._decoder = _decoder if _decoder is not None else _Decoder(samples, image_size, cache if cache is not None else shared_cache(), _shared_pool())
        self._rows = _rows  # None: every row of the decoder, in order
        self.image_size = image_size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.image_size, self.image_size)

    @property
    def nbytes(self) -> int:
        """Bytes the images would take if held in memory (they are not)."""
        return int(np.prod(self.shape))

    @property
    def cache(self) -> DecodedCache:
        return self._decoder.cache

    def __len__(self) -> int:
        return len(self._decoder) if self._rows is None else len(self._rows)

    def _base_rows(self, key) -> np.ndarray:
        if isinstance(key, slice):
            rows = np.arange(*key.indices(len(self)), dtype=np.int64)
        else:
            rows = np.asarray(key)
            if rows.dtype == bool:
                if rows.shape != (len(self),):
                    raise IndexError(f"boolean index of shape {rows.shape} for {len(self)} images")
                rows = np.flatnonzero(rows)
            elif not np.issubdtype(rows.dtype, np.integer):
                raise IndexError(f"StreamingImages cannot be indexed with {key!r}")
            rows = np.where(rows < 0, rows + len(self), rows).astype(np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
                raise IndexError(f"index out of range for {len(self)} images")
        return rows if self._rows is None else self._rows[rows]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._decoder.read(self._base_rows(np.array([key])))[0]
        if isinstance(key, tuple):
            raise IndexError("StreamingImages supports one index (int, slice or index array)")
        rows = self._base_rows(key)
        return self._decoder.read(rows.reshape(-1)).reshape(rows.shape + self.shape[1:])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Decodes *every* image: only for small lists."""
        array = self[:]
        return array if dtype is None else array.astype(dtype)

    def subset(self, rows: Sequence[int] | np.ndarray | slice) -> "StreamingImages":
        """A lazy view of some rows (nothing is decoded until it is read)."""
        return StreamingImages((), self.image_size, _decoder=self._decoder, _rows=self._base_rows(rows))

    def prefetch(self, rows: Sequence[int] | np.ndarray) -> None:
        """Start decoding ``rows`` in the background (cache warm-up; never blocks)."""
        for index in self._base_rows(np.asarray(rows, dtype=np.int64)).tolist():
            self._decoder.submit(index)

    def path(self, row: int) -> str:
        return self._decoder.path(int(self._base_rows(np.array([row]))[0]))

    def __repr__(self) -> str:
        return f"StreamingImages({len(self)} images at {self.image_size}px)"


def is_streaming(images) -> bool:
    return isinstance(images, StreamingImages)


def row_subset(images, rows: np.ndarray):
    """``images[rows]`` without reading anything: a view for arrays and streamed lists alike."""
    if is_streaming(images):
        return images.subset(rows)
    return _LazyRows(images, np.asarray(rows, dtype=np.int64))


class _LazyRows:
    """Rows of a (memory-mapped) array read only when sliced, so a shard costs no copy."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self._array = array
        self._rows = rows
        self.dtype = array.dtype
        self.shape = (len(rows),) + tuple(array.shape[1:])
        self.ndim = array.ndim

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, key):
        rows = self._rows[key]
        if np.ndim(rows) == 0:
            return self._array[int(rows)]
        order = np.argsort(rows, kind="stable")  # memmaps read fastest in file order
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        out[order] = self._array[rows[order]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self[:]
        return array if dtype is None else array.astype(dtype)


class ReadaheadBatches:
    """Endless ``(uint8 x, int64 y)`` batches from ``sampler`` (an :class:`~dgmeta.data.InfiniteBatches`
    or anything with ``images``, ``labels``, ``next_indices``, ``state_dict``, ``load_state_dict``)
    whose images are streamed: the next batch's files decode while the current one trains.

    The sampler is always one batch ahead, so :meth:`state_dict` returns the sampler's state from
    *before* that look-ahead: a resumed run draws exactly the batches it would have drawn.
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.images = sampler.images
        self.labels = sampler.labels
        self._ahead: np.ndarray | None = None
        self._resume_state: dict | None = None

    def __len__(self) -> int:
        return len(self.sampler)

    def next(self):
        import torch

        current = self.sampler.next_indices() if self._ahead is None else self._ahead
        self._resume_state = self.sampler.state_dict()
        self._ahead = self.sampler.next_indices()
        self.images.prefetch(self._ahead)
        return torch.from_numpy(self.images[current]), torch.from_numpy(self.labels[current])

    def __iter__(self) -> "ReadaheadBatches":
        return self

    def __next__(self):
        return self.next()

    def state_dict(self) -> dict:
        return self.sampler.state_dict() if self._ahead is None else self._resume_state

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._ahead = None
        self._resume_state = None


def with_readahead(sampler):
    """``sampler`` itself for in-memory / memory-mapped images, wrapped in :class:`ReadaheadBatches` when streamed."""
    return ReadaheadBatches(sampler) if is_streaming(sampler.images) else sampler


__all__ = [
    "CACHE_MODES",
    "STREAM_THRESHOLD",
    "DecodedCache",
    "ReadaheadBatches",
    "StreamingImages",
    "choose_cache",
    "image_array",
    "is_streaming",
    "row_subset",
    "shared_cache",
    "with_readahead",
]
