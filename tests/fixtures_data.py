"""Tiny datasets in the real PACS, Office-Home and DomainNet layouts, for the data tests.

Every image of class ``k`` is a flat colour ``class_colour(k)`` so tests can check that the
right file landed in the right row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe")


def class_colour(label: int) -> tuple[int, int, int]:
    return (40 + 60 * label % 256, 200 - 50 * label % 200, (90 * label + 30) % 256)


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)  # format from the suffix
    return path


def _write_tree(root: Path, domains: Sequence[str], classes: Sequence[str], per_class: int, suffix: str) -> dict[str, list[tuple[str, int]]]:
    """Images ``<root>/<domain>/<class>/<domain>_<class>_<i><suffix>``; returns ``{domain: [(rel, label)]}``."""
    entries: dict[str, list[tuple[str, int]]] = {}
    for domain in domains:
        entries[domain] = []
        for label, name in enumerate(classes):
            for i in range(per_class):
                rel = f"{domain}/{name}/{domain}_{name}_{i:03d}{suffix}"
                write_image(root / rel, class_colour(label))
                entries[domain].append((rel, label))
    return entries


def _write_list(path: Path, entries: Sequence[tuple[str, int]], offset: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{rel} {label + offset}\n" for rel, label in entries))


def make_pacs(data_root: Path, per_class: int = 5, val_per_class: int = 1, lists_in: str = "pacs_splits", classes: Sequence[str] = PACS_CLASSES) -> Path:
    """``<data_root>/PACS/<domain>/<class>/*.png`` plus official-format kfold lists (1-based labels).

    The last ``val_per_class`` images of every class go to crossval, the rest to train; test is all.
    ``lists_in`` is ``"pacs_splits"`` (``<data_root>/pacs_splits``), ``"PACS/splits"`` or ``""`` (none).
    """
    entries = _write_tree(data_root / "PACS", PACS_DOMAINS, classes, per_class, ".png")
    if lists_in:
        folder = data_root / lists_in
        for domain, items in entries.items():
            val = [e for e in items if int(e[0].rsplit("_", 1)[1][:3]) >= per_class - val_per_class]
            train = [e for e in items if e not in val]
            _write_list(folder / f"{domain}_train_kfold.txt", train, 1)
            _write_list(folder / f"{domain}_crossval_kfold.txt", val, 1)
            _write_list(folder / f"{domain}_test_kfold.txt", items, 1)
    return data_root


def make_office_home(data_root: Path, classes: Sequence[str] = ("Alarm_Clock", "Backpack", "Batteries"), per_class: int = 5) -> Path:
    _write_tree(data_root / "OfficeHome", ("Art", "Clipart", "Product", "Real_World"), classes, per_class, ".jpg")
    return data_root


def make_domainnet(
    data_root: Path,
    domains: Sequence[str] = ("clipart", "sketch"),
    classes: Sequence[str] = ("aircraft_carrier", "airplane", "alarm_clock"),
    per_class: int = 12,
    test_per_class: int = 2,
    lists_in: str = "DomainNet",
) -> Path:
    """``<data_root>/DomainNet/<domain>/<class>/*.jpg`` plus ``<domain>_{train,test}.txt`` (0-based labels)."""
    entries = _write_tree(data_root / "DomainNet", domains, classes, per_class, ".jpg")
    for domain, items in entries.items():
        test = [e for e in items if int(e[0].rsplit("_", 1)[1][:3]) >= per_class - test_per_class]
        _write_list(data_root / lists_in / f"{domain}_train.txt", [e for e in items if e not in test], 0)
        _write_list(data_root / lists_in / f"{domain}_test.txt", test, 0)
    return data_root
