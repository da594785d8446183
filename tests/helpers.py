"""Tiny image fixtures shared by the training/CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dgmeta.training.data import DomainArrays, JobData

CLASS_COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 200, 30)]


def make_folder_dataset(
    root: Path, domains=("d0", "d1", "d2"), classes=("a", "b"), per_class: int = 12, size: int = 24, seed: int = 0
) -> Path:
    """``root/<domain>/<class>/*.png``: the class is a coloured square, the domain a background
    brightness and noise level, so classes are separable and domains visibly differ."""
    rng = np.random.default_rng(seed)
    for d_index, domain in enumerate(domains):
        background = 30 + 70 * d_index
        for c_index, cls in enumerate(classes):
            folder = root / domain / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = np.full((size, size, 3), background, dtype=np.float32)
                img += rng.normal(0, 8 + 6 * d_index, img.shape)
                lo = int(rng.integers(2, size // 3))
                hi = lo + size // 2
                img[lo:hi, lo:hi] = CLASS_COLOURS[c_index % len(CLASS_COLOURS)]
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{domain}_{cls}_{i:03d}.png")
    return root


def learner_protocols(exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(learner, protocol)`` for every registered learner and each protocol it declares."""
    from dgmeta.learners.registry import learner_class, learner_names

    return [(name, protocol) for name in learner_names() if name not in exclude for protocol in learner_class(name).protocols]


def meta_modes() -> list[str]:
    """``none``, each registered meta term alone, and all of them composed."""
    from dgmeta.meta.registry import meta_term_names

    terms = meta_term_names()
    # composed in the order the README's runs use (init before critic); others follow by name
    ordered = sorted(terms, key=lambda name: (name != "init", name))
    return ["none", *terms, "+".join(ordered)] if len(terms) > 1 else ["none", *terms]


def tiny_job_data() -> JobData:
    """Two sources, a target with unlabelled images (msda): random 24 px images, labels 0/1."""
    rng = np.random.default_rng(0)

    def arrays(n: int) -> DomainArrays:
        return DomainArrays(rng.integers(0, 255, (n, 3, 24, 24), dtype=np.uint8), rng.integers(0, 2, n).astype(np.int64))

    data = JobData(["d0", "d1"], "d2", [arrays(8), arrays(8)], [arrays(4), arrays(4)], arrays(6))
    data.target_unlabelled = arrays(8)
    return data
