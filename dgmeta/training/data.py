"""The arrays one (target, seed) job trains and evaluates on, per protocol.

* ``dg``: sources' train/val splits; the target only for its test split.
* ``msda``: also the target's *train* split as unlabelled images.
* ``ssda``: ``shots`` labelled target images per class drawn (seeded, recorded) from the target's
  train split; the rest of it unlabelled; the shots are removed from the target's test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dgmeta.errors import ConfigError


@dataclass
class DomainArrays:
    images: np.ndarray  # uint8 [N, 3, S, S]
    labels: np.ndarray  # int64 [N]


@dataclass
class JobData:
    sources: list[str]
    target: str
    train: list[DomainArrays]
    val: list[DomainArrays]
    test: DomainArrays
    target_unlabelled: DomainArrays | None = None
    target_shots: DomainArrays | None = None
    shot_files: list[str] = field(default_factory=list)


def _arrays(samples, image_size, cache_dir, progress, cache: str = "disk") -> DomainArrays:
    from dgmeta.data import labels_of
    from dgmeta.data.streaming import image_array

    return DomainArrays(image_array(samples, image_size, cache, cache_dir=cache_dir, progress=progress), labels_of(samples))


def choose_shots(samples, shots: int, seed: int, num_classes: int):
    rng = np.random.default_rng(seed)
    by_class: dict[int, list] = {c: [] for c in range(num_classes)}
    for s in samples:
        by_class[s.label].append(s)
    chosen = []
    for c, items in by_class.items():
        if len(items) < shots:
            raise ConfigError(
                f"--shots {shots} is larger than class {c} of the target has train images ({len(items)})",
                f"use --shots {max(1, len(items))} or fewer",
            )
        idx = rng.choice(len(items), size=shots, replace=False)
        chosen.extend(items[i] for i in sorted(idx))
    return chosen


def prepare_job_data(dataset, target: str, protocol: str, image_size: int, cache_dir, shots: int, seed: int, progress: bool, cache: str = "disk") -> JobData:
    """``cache``: ``disk`` | ``stream`` | ``auto`` per image list (dgmeta.data.streaming.choose_cache)."""
    sources = [d for d in dataset.domains if d != target]
    load = lambda samples: _arrays(samples, image_size, cache_dir, progress, cache)  # noqa: E731
    train = [load(dataset.samples(d, "train")) for d in sources]
    val = [load(dataset.samples(d, "val")) for d in sources]
    test_samples = dataset.samples(target, "test")
    data = JobData(sources, target, train, val, test=None)  # type: ignore[arg-type]
    if protocol in ("msda", "ssda"):
        target_train = dataset.samples(target, "train")
        if protocol == "ssda":
            shot_samples = choose_shots(target_train, shots, seed, len(dataset.classes))
            shot_paths = {s.path for s in shot_samples}
            data.target_shots = load(shot_samples)
            data.shot_files = sorted(str(s.path) for s in shot_samples)
            target_train = [s for s in target_train if s.path not in shot_paths]
            test_samples = [s for s in test_samples if s.path not in shot_paths]
        data.target_unlabelled = load(target_train)
    data.test = load(test_samples)
    return data
