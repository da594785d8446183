"""The dataset registry: `create_dataset(name, ...)` for pacs, office_home, domainnet, folder:PATH, pacs-mini.

Where data lives: ``--data-root`` (or env ``DGMETA_DATA``, else ``./data``) holds one folder per
dataset in its usual public layout::

    PACS/<domain>/<class>/<image>            + pacs_splits/<domain>_{train,crossval,test}_kfold.txt
    OfficeHome/<domain>/<class>/<image>      (no official split: always a seeded random split)
    DomainNet/<domain>/<class>/<image>       + DomainNet/<domain>_{train,test}.txt

Split kinds: ``official`` uses the published lists (PACS: train / crossval / test; DomainNet:
train list split 90/10 into train / val, seeded and stratified, test list as test); ``random``
is DomainBed's seeded 80/20 per-domain split, stratified by class, with test = whole domain.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import dgmeta
from dgmeta.data.dataset import DomainDataset, DomainSplits
from dgmeta.data.official import DOMAINNET_DOMAINS, OFFICE_HOME_DOMAINS, PACS_DOMAINS, PACS_SPLIT_SHA256
from dgmeta.data.splits import DOMAINNET_VAL_HOLDOUT, RANDOM_HOLDOUT, SPLIT_KINDS, find_split_file, read_split_list, stratified_holdout
from dgmeta.data.tree import check_same_classes, image_files, is_image_name, scan_domain, subfolders
from dgmeta.errors import ConfigError, DataError
from dgmeta.registry import Registry

#: builder(data_root, split, seed) -> DomainDataset; for ``folder`` the "data root" is the tree itself
DatasetBuilder = Callable[[str | os.PathLike | None, str, int], DomainDataset]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")

# package data, so a wheel install has it too (not a path into a source checkout)
PACS_MINI_DIR = Path(dgmeta.__file__).resolve().parent / "samples" / "pacs-mini"


def resolve_data_root(data_root: str | os.PathLike | None = None, must_exist: bool = True) -> Path:
    """``data_root``, else env ``DGMETA_DATA``, else ``./data`` (absolute)."""
    if data_root is not None:
        value, source = data_root, "--data-root"
    elif os.environ.get("DGMETA_DATA"):
        value, source = os.environ["DGMETA_DATA"], "DGMETA_DATA"
    else:
        value, source = "data", "the default ./data"
    path = Path(value).expanduser().absolute()
    if must_exist and not path.is_dir():
        raise DataError(
            f"data root {path} does not exist (from {source})",
            "pass --data-root DIR or set DGMETA_DATA to the folder that holds PACS/, OfficeHome/ or DomainNet/",
        )
    return path


def create_dataset(name: str, data_root: str | os.PathLike | None = None, split: str = "official", seed: int = 0) -> DomainDataset:
    """Look up ``name`` and build its :class:`DomainDataset`; ``folder:PATH`` reads any domain/class tree."""
    if split not in SPLIT_KINDS:
        raise ConfigError(f"unknown split {split!r}", f"choose one of: {', '.join(SPLIT_KINDS)}")
    if name.startswith("folder:"):
        return DATASETS.get("folder")(name[len("folder:"):], split, seed)
    if name == "folder":
        raise ConfigError("dataset 'folder' needs a path", "write it as folder:PATH with PATH/<domain>/<class>/<image>")
    return DATASETS.get(name)(data_root, split, seed)


# ---------------------------------------------------------------------------------------------
# shared pieces


def _dataset_folder(data_root: Path, folder: str, name: str, layout: str) -> Path:
    path = data_root / folder
    if not path.is_dir():
        raise DataError(
            f"{name} not found: looked for {path}",
            f"place a copy as {layout} (or run `dgmeta data download {name}`), or point --data-root / DGMETA_DATA at the folder holding {folder}/",
        )
    return path.resolve()


def _domain_folders(root: Path, known: Sequence[str], layout: str, require_all: bool, ignore: Sequence[str] = ("splits",)) -> list[str]:
    found = [name for name in subfolders(root, root) if name not in ignore]
    unknown = [name for name in found if name not in known]
    if unknown:
        raise DataError(f"wrong layout: unexpected folder {root / unknown[0]}", f"expected {layout} with domains {', '.join(known)}")
    missing = [name for name in known if name not in found]
    if not found or (require_all and missing):
        raise DataError(f"wrong layout: no domain folder {missing[0]!r} in {root}", f"expected {layout} with domains {', '.join(known)}")
    return found


def _random_split(classes: Sequence[str], tree: dict[str, list[str]], seed: int, domain: str) -> DomainSplits:
    items = [(rel, label) for label, name in enumerate(classes) for rel in tree[name]]
    keep, holdout = stratified_holdout(items, RANDOM_HOLDOUT, seed, domain)
    return {"train": [items[i] for i in keep], "val": [items[i] for i in holdout], "test": items}


def _require_list(folders: Sequence[Path], name: str, dataset: str) -> Path:
    path = find_split_file(folders, name)
    if path is None:
        places = " or ".join(str(folder) for folder in folders)
        raise DataError(f"official {dataset} split list {name} not found in {places}", "place the official lists there, or pass --split random")
    return path


# ---------------------------------------------------------------------------------------------
# PACS (and the bundled pacs-mini sample, same layout)

PACS_LAYOUT = "<data-root>/PACS/<domain>/<class>/<image> with lists in <data-root>/pacs_splits/"
PACS_PARTS = {"train": "train", "val": "crossval", "test": "test"}


def _build_pacs(name: str, data_root: Path, split: str, seed: int, reference_checksums: dict[str, str]) -> DomainDataset:
    root = _dataset_folder(data_root, "PACS", name, PACS_LAYOUT)
    domains = _domain_folders(root, PACS_DOMAINS, PACS_LAYOUT, require_all=True)
    trees = {domain: scan_domain(root, domain, PACS_LAYOUT) for domain in domains}
    classes = check_same_classes({domain: list(tree) for domain, tree in trees.items()}, root)

    if split == "random":
        dataset = DomainDataset(name, root, domains, classes, "random", lambda d: _random_split(classes, trees[d], seed, d))
    else:
        folders = [data_root / "pacs_splits", root / "splits"]
        lists = {(d, part): _require_list(folders, f"{d}_{part}_kfold.txt", "PACS") for d in domains for part in PACS_PARTS.values()}

        def build(domain: str) -> DomainSplits:
            on_disk = {rel for files in trees[domain].values() for rel in files}
            parts = {}
            for split_name, part in PACS_PARTS.items():
                path = lists[(domain, part)]
                entries = read_split_list(path, 1, classes, domain)
                absent = next((rel for rel, _ in entries if rel not in on_disk), None)
                if absent is not None:
                    raise DataError(f"split list {path.name} names a missing file {root / absent}", "restore the file (a complete PACS copy has all 9,991 images)")
                parts[split_name] = entries
            return parts

        dataset = DomainDataset(name, root, domains, classes, "official", build, lists.values(), reference_checksums)
    for domain in domains:  # small dataset: parse everything now so list errors surface at creation
        dataset.relative_samples(domain, "test")
    return dataset


@DATASETS.register("pacs")
def pacs(data_root: str | os.PathLike | None, split: str, seed: int) -> DomainDataset:
    return _build_pacs("pacs", resolve_data_root(data_root), split, seed, PACS_SPLIT_SHA256)


@DATASETS.register("pacs-mini")
def pacs_mini(data_root: str | os.PathLike | None, split: str, seed: int) -> DomainDataset:
    """A small real PACS subset shipped inside the package (``dgmeta/samples/pacs-mini``), or ``<data_root>/pacs-mini``."""
    candidates = []
    if data_root is not None or os.environ.get("DGMETA_DATA"):
        candidates.append(resolve_data_root(data_root, must_exist=False) / "pacs-mini")
    candidates.append(PACS_MINI_DIR)
    for folder in candidates:
        if (folder / "PACS").is_dir():
            # its lists are a subset of the official ones, so no official checksums apply
            return _build_pacs("pacs-mini", folder, split, seed, {})
    raise DataError(
        f"pacs-mini not found: looked in {' and '.join(str(c) for c in candidates)}",
        "it ships inside the dgmeta package; reinstall dgmeta, or rebuild it with `python scripts/make_pacs_mini.py --source DIR --out dgmeta/samples/pacs-mini`",
    )


# ---------------------------------------------------------------------------------------------
# Office-Home

OFFICE_HOME_LAYOUT = "<data-root>/OfficeHome/<domain>/<class>/<image>"


@DATASETS.register("office_home")
def office_home(data_root: str | os.PathLike | None, split: str, seed: int) -> DomainDataset:
    """Office-Home has no official split lists: ``official`` falls back to a seeded random split."""
    root = _dataset_folder(resolve_data_root(data_root), "OfficeHome", "office_home", OFFICE_HOME_LAYOUT)
    domains = _domain_folders(root, OFFICE_HOME_DOMAINS, OFFICE_HOME_LAYOUT, require_all=True)
    trees = {domain: scan_domain(root, domain, OFFICE_HOME_LAYOUT) for domain in domains}
    classes = check_same_classes({domain: list(tree) for domain, tree in trees.items()}, root)
    return DomainDataset("office_home", root, domains, classes, "random", lambda d: _random_split(classes, trees[d], seed, d))


# ---------------------------------------------------------------------------------------------
# DomainNet: 586k images, so nothing here lists or stats individual images under the official split

DOMAINNET_LAYOUT = "<data-root>/DomainNet/<domain>/<class>/<image> with <domain>_train.txt / <domain>_test.txt in <data-root>/DomainNet/"


def _first_image(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(is_image_name(entry.name) for entry in entries)


@DATASETS.register("domainnet")
def domainnet(data_root: str | os.PathLike | None, split: str, seed: int) -> DomainDataset:
    """DomainNet; domains may be a subset of the six (it is distributed one archive per domain).

    Official split: ``<domain>_train.txt`` gives train and val (a seeded, class-stratified 10%
    holdout, since the lists have no validation part), ``<domain>_test.txt`` gives test. Sample
    lists come from the text lists alone; a listed file that is missing is reported by
    ``dgmeta data verify`` or when its image is decoded.
    """
    root = _dataset_folder(resolve_data_root(data_root), "DomainNet", "domainnet", DOMAINNET_LAYOUT)
    domains = _domain_folders(root, DOMAINNET_DOMAINS, DOMAINNET_LAYOUT, require_all=False)
    classes = check_same_classes({domain: subfolders(root / domain, root) for domain in domains}, root)
    if not classes:
        raise DataError(f"domain folder {root / domains[0]} is empty", f"expected {DOMAINNET_LAYOUT}")
    for domain in domains:
        for name in classes:
            if not _first_image(root / domain / name):
                raise DataError(f"class folder {root / domain / name} holds no images", f"expected {DOMAINNET_LAYOUT}")

    if split == "random":
        return DomainDataset(
            "domainnet", root, domains, classes, "random", lambda d: _random_split(classes, scan_domain(root, d, DOMAINNET_LAYOUT), seed, d)
        )
    folders = [root, root / "splits"]
    lists = {(d, part): _require_list(folders, f"{d}_{part}.txt", "DomainNet") for d in domains for part in ("train", "test")}

    def build(domain: str) -> DomainSplits:
        train = read_split_list(lists[(domain, "train")], 0, classes, domain)
        keep, holdout = stratified_holdout(train, DOMAINNET_VAL_HOLDOUT, seed, domain)
        test = read_split_list(lists[(domain, "test")], 0, classes, domain)
        return {"train": [train[i] for i in keep], "val": [train[i] for i in holdout], "test": test}

    return DomainDataset("domainnet", root, domains, classes, "official", build, lists.values())


# ---------------------------------------------------------------------------------------------
# any <PATH>/<domain>/<class>/<image> tree


@DATASETS.register("folder")
def folder(path: str | os.PathLike | None, split: str, seed: int) -> DomainDataset:
    """Every sub-folder of ``path`` is a domain; there are no official lists, so the split is random."""
    if not path:
        raise ConfigError("dataset 'folder' needs a path", "write it as folder:PATH")
    layout = f"{path}/<domain>/<class>/<image>"
    given = Path(path).expanduser().absolute()
    if not given.is_dir():
        raise DataError(f"folder dataset {given} does not exist", f"expected {layout}")
    root = given.resolve()
    domains = subfolders(root, root)
    if not domains:
        stray = image_files(root, root)
        detail = f"images directly in {root}" if stray else f"no domain folders in {root}"
        raise DataError(f"wrong layout: {detail}", f"expected {layout}")
    trees = {domain: scan_domain(root, domain, layout) for domain in domains}
    classes = check_same_classes({domain: list(tree) for domain, tree in trees.items()}, root)
    return DomainDataset(f"folder:{path}", root, domains, classes, "random", lambda d: _random_split(classes, trees[d], seed, d))
