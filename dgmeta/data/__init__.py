"""Data stage: dataset registry and splits, decoded-image cache, endless batches, batched augmentation.

See docs/ARCHITECTURE.md ("Data contract") and dgmeta/data/catalog.py for layouts and split rules.
Names are imported on first use, so `dgmeta data ...` (numpy + PIL only) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AugmentConfig": "dgmeta.data.augment",
    "augment_batch": "dgmeta.data.augment",
    "InfiniteBatches": "dgmeta.data.batches",
    "DATASETS": "dgmeta.data.catalog",
    "create_dataset": "dgmeta.data.catalog",
    "resolve_data_root": "dgmeta.data.catalog",
    "DomainDataset": "dgmeta.data.dataset",
    "Sample": "dgmeta.data.dataset",
    "labels_of": "dgmeta.data.images",
    "load_images": "dgmeta.data.images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dgmeta.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from dgmeta.data.augment import AugmentConfig, augment_batch
    from dgmeta.data.batches import InfiniteBatches
    from dgmeta.data.catalog import DATASETS, create_dataset, resolve_data_root
    from dgmeta.data.dataset import DomainDataset, Sample
    from dgmeta.data.images import labels_of, load_images
