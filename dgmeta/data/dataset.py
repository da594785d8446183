"""`DomainDataset`: a multi-domain image dataset as lists of (path, label) per domain and split."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

from dgmeta.errors import ConfigError

SPLITS = ("train", "val", "test")


class Sample(NamedTuple):
    path: Path
    label: int


#: ``{split: [(relative path, label)]}`` for one domain.
DomainSplits = Mapping[str, Sequence[tuple[str, int]]]


class DomainDataset:
    """Domains, classes and per-split sample lists of one dataset.

    Sample lists are built per domain on first use (``build_domain``), so a large dataset
    such as DomainNet costs only the domains a run touches. Paths inside are relative to
    ``root`` (the resolved dataset folder), which split lists and fingerprints also use.
    """

    def __init__(
        self,
        name: str,
        root: Path,
        domains: Sequence[str],
        classes: Sequence[str],
        split_kind: str,
        build_domain: Callable[[str], DomainSplits],
        split_files: Sequence[Path] = (),
        reference_checksums: Mapping[str, str] | None = None,
    ):
        self.name = name
        self.root = Path(root)
        self.domains = list(domains)
        self.classes = list(classes)
        self.split_kind = split_kind
        self._build_domain = build_domain
        self._split_files = sorted(split_files)
        #: sha256 of the official split lists by file name (empty when there are none to check)
        self.reference_checksums = dict(reference_checksums or {})
        self._built: dict[str, DomainSplits] = {}
        self._samples: dict[tuple[str, str], list[Sample]] = {}

    def __repr__(self) -> str:
        return f"DomainDataset({self.name!r}, root={str(self.root)!r}, domains={self.domains}, classes={len(self.classes)}, split={self.split_kind!r})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check_domain(self, name: str) -> str:
        if name not in self.domains:
            raise ConfigError(f"unknown domain {name!r} for dataset {self.name}", f"choose one of: {', '.join(self.domains)}")
        return name

    def relative_samples(self, domain: str, split: str) -> Sequence[tuple[str, int]]:
        """``[(path relative to root, label)]`` of one domain's split; cheap, used for hashing."""
        self.check_domain(domain)
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}", f"choose one of: {', '.join(SPLITS)}")
        if domain not in self._built:
            self._built[domain] = self._build_domain(domain)
        return self._built[domain][split]

    def samples(self, domain: str, split: str) -> list[Sample]:
        """The samples of ``split`` in ``domain``: ``train`` / ``val``, or ``test`` (the whole domain,
        except for DomainNet's official split where it is the official test list)."""
        key = (domain, split)
        if key not in self._samples:  # Path objects cost a few µs each: build them once
            prefix = os.fspath(self.root) + os.sep
            self._samples[key] = [Sample(Path(prefix + rel), label) for rel, label in self.relative_samples(domain, split)]
        return list(self._samples[key])

    def split_files(self) -> list[Path]:
        """The split list files this dataset was built from (none under a random split)."""
        return list(self._split_files)

    def fingerprint(self) -> str:
        """sha256 over the sorted relative paths of every sample and the split files' bytes."""
        paths = set()
        for domain in self.domains:
            for split in SPLITS:
                paths.update(rel for rel, _ in self.relative_samples(domain, split))
        digest = hashlib.sha256()
        for rel in sorted(paths):
            digest.update(rel.encode() + b"\n")
        for path in self._split_files:
            digest.update(f"\0{path.name}\0".encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()
