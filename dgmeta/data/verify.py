"""`dgmeta data verify`: check that a dataset is complete, decodable and split as published."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

from dgmeta.data.dataset import SPLITS, DomainDataset
from dgmeta.data.images import decode_rgb, describe_mode
from dgmeta.data.official import FULL_SIZES
from dgmeta.data.parallel import run_chunked
from dgmeta.data.tree import ensure_inside, scan_domain
from dgmeta.errors import DataError

MAX_LISTED = 3  # examples named per problem


@dataclass
class VerifyReport:
    dataset: DomainDataset
    class_counts: dict[str, dict[str, int]]  # domain -> class -> images (test split)
    split_counts: dict[str, dict[str, int]]  # domain -> split -> images
    checksums: list[tuple[str, str]] = field(default_factory=list)  # (file name, official | differs | no reference)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0
    modes: dict[str, int] = field(default_factory=dict)  # the files' PIL modes, all fed as 8-bit RGB
    rotated: int = 0  # files turned upright by their EXIF orientation
    scalings: dict[str, dict[str, int]] = field(default_factory=dict)  # mode -> value-range rule -> files

    def decoding(self) -> str:
        """What the network is fed: every decoded file as 8-bit RGB, from which source modes."""
        parts = ", ".join(f"{count:,} {describe_mode(mode, self.scalings.get(mode))}" for mode, count in sorted(self.modes.items(), key=lambda kv: (-kv[1], kv[0])))
        line = f"fed to the network as 8-bit RGB: {parts or 'no files'}"
        return line + (f"; {self.rotated:,} turned upright by their EXIF orientation" if self.rotated else "")

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        ds = self.dataset
        head = f"{ds.name}: {self.files:,} images in {len(ds.domains)} domains ({', '.join(ds.domains)}), {len(ds.classes)} classes, split {ds.split_kind}"
        if self.problems:
            return f"{head}; {len(self.problems)} problem(s): " + "; ".join(self.problems)
        official = sum(status == "official" for _, status in self.checksums)
        lists = f"; split lists {official}/{len(self.checksums)} official" if self.checksums and ds.reference_checksums else ""
        return f"{head}; every file decodes{lists}"


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _check_checksums(ds: DomainDataset, report: VerifyReport) -> None:
    differing = []
    for path in ds.split_files():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        reference = ds.reference_checksums.get(path.name)
        status = "no reference" if reference is None else ("official" if digest == reference else "differs")
        report.checksums.append((path.name, status))
        if status == "differs":
            differing.append(path.name)
    if differing:
        report.problems.append(f"{len(differing)} split list(s) differ from the official ones ({_examples(differing)})")
    if ds.split_files() and not ds.reference_checksums:
        report.notes.append("no official checksums known for these split lists")


def _check_unlisted(ds: DomainDataset, listed: set[str], report: VerifyReport) -> None:
    if not ds.split_files():
        return  # random splits are drawn from the folders themselves
    on_disk = set()
    for domain in ds.domains:
        on_disk.update(rel for files in scan_domain(ds.root, domain, str(ds.root)).values() for rel in files)
    unlisted = sorted(on_disk - listed)
    if unlisted:
        report.notes.append(f"{len(unlisted):,} image(s) on disk are in no split list ({_examples(unlisted)})")


def _check_decoding(ds: DomainDataset, paths: list[str], report: VerifyReport, progress: bool) -> None:
    failures: list[str] = []
    lock = threading.Lock()

    def decode(_: int, rel: str) -> None:
        path = ds.root / rel
        try:
            ensure_inside(path, ds.root, "verify")
            decoded = decode_rgb(path)
            decoded.image.close()
        except DataError as exc:
            with lock:
                failures.append(exc.message)
            return
        with lock:
            report.modes[decoded.mode] = report.modes.get(decoded.mode, 0) + 1
            report.rotated += decoded.rotated
            if decoded.scaling:
                rules = report.scalings.setdefault(decoded.mode, {})
                rules[decoded.scaling] = rules.get(decoded.scaling, 0) + 1

    run_chunked(paths, decode, f"decoding {len(paths):,} {ds.name} images", progress)
    if failures:
        failures.sort()
        report.problems.append(f"{len(failures)} file(s) unusable: {_examples(failures)}")


def verify_dataset(ds: DomainDataset, progress: bool = True) -> VerifyReport:
    """Counts per domain/class/split, split-list checksums, unlisted files, train/val overlap, and a
    full decode of every file (in a thread pool)."""
    class_counts, split_counts = {}, {}
    listed: set[str] = set()
    problems = []
    for domain in ds.domains:
        parts = {split: ds.relative_samples(domain, split) for split in SPLITS}
        split_counts[domain] = {split: len(entries) for split, entries in parts.items()}
        counts = dict.fromkeys(ds.classes, 0)
        for _, label in parts["test"]:
            counts[ds.classes[label]] += 1
        class_counts[domain] = counts
        overlap = {rel for rel, _ in parts["train"]} & {rel for rel, _ in parts["val"]}
        if overlap:
            problems.append(f"{domain}: {len(overlap)} image(s) in both train and val ({_examples(sorted(overlap))})")
        for entries in parts.values():
            listed.update(rel for rel, _ in entries)
    report = VerifyReport(ds, class_counts, split_counts, problems=problems, files=len(listed))

    expected = FULL_SIZES.get(ds.name)
    if expected is not None and expected != len(listed):
        report.notes.append(f"a complete {ds.name} has {expected:,} images, found {len(listed):,}")
    _check_checksums(ds, report)
    _check_unlisted(ds, listed, report)
    _check_decoding(ds, sorted(listed), report, progress)
    return report

