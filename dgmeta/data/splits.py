"""Split logic: seeded stratified holdout and parsing of official split lists."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from dgmeta.data.tree import safe_relative
from dgmeta.errors import DataError

SPLIT_KINDS = ("official", "random")
#: DomainBed holds out 20% of every domain for validation under a random split.
RANDOM_HOLDOUT = 0.2
#: DomainNet's official lists have no validation part; we carve 10% out of the train list.
DOMAINNET_VAL_HOLDOUT = 0.1


def stratified_holdout(items: Sequence[tuple[str, int]], fraction: float, seed: int, salt: str) -> tuple[list[int], list[int]]:
    """Indices of ``items`` (``(path, label)``) split into (keep, holdout), class by class.

    Each class contributes ``round(n * fraction)`` items to the holdout, at least one and at
    most ``n - 1`` when it has two or more, so both parts see every class. The permutation
    depends on ``seed`` and ``salt`` (the domain name, so domains are shuffled independently)
    and on the sorted paths only, never on the input order or Python's hash seed.
    """
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    by_class: dict[int, list[int]] = {}
    for index in sorted(range(len(items)), key=lambda i: items[i][0]):
        by_class.setdefault(items[index][1], []).append(index)
    keep: list[int] = []
    holdout: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        n = len(members)
        n_out = min(max(int(round(n * fraction)), 1), n - 1) if n >= 2 else 0
        order = rng.permutation(n)
        holdout.extend(members[i] for i in order[:n_out])
        keep.extend(members[i] for i in order[n_out:])
    return sorted(keep), sorted(holdout)


def read_split_list(path: Path, label_offset: int, classes: Sequence[str], domain: str) -> list[tuple[str, int]]:
    """``[(relative path, 0-based label)]`` from a ``<path> <label>`` list.

    ``label_offset`` is 1 for PACS (1-based labels) and 0 for DomainNet. Every path must stay
    inside the dataset folder, belong to ``domain`` and sit in the folder of the class its label
    names (labels index the alphabetical class list).
    """
    class_index = {name: i for i, name in enumerate(classes)}
    entries = []
    name = path.name
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{name} line {number}"
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{where}: expected '<path> <label>', got {line.strip()!r}", f"is {path} really a split list?")
            rel = safe_relative(parts[0], where)
            label = int(parts[1]) - label_offset
            pieces = rel.split("/")
            if len(pieces) != 3 or pieces[0] != domain:
                raise DataError(f"{where}: {rel!r} is not a {domain}/<class>/<image> path", f"{name} must list images of domain {domain}")
            folder_label = class_index.get(pieces[1])
            if folder_label is None:
                raise DataError(f"{where}: unknown class folder {pieces[1]!r}", f"known classes: {', '.join(classes)}")
            if label != folder_label:
                base = "1-based" if label_offset else "0-based"
                raise DataError(
                    f"{where}: label {parts[1]} does not match class folder {pieces[1]!r} (expected {folder_label + label_offset})",
                    f"labels are {base} indices into the alphabetical class list; fix the list",
                )
            entries.append((rel, label))
    if not entries:
        raise DataError(f"split list {path} is empty", "replace it with the official list")
    return entries


def find_split_file(folders: Sequence[Path], name: str) -> Path | None:
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None
