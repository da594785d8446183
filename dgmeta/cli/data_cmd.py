"""`dgmeta data info | verify | download`: inspect, check and fetch datasets."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from dgmeta.data.catalog import create_dataset
from dgmeta.data.dataset import SPLITS, DomainDataset
from dgmeta.data.download import DEFAULT_TIMEOUT, download_dataset
from dgmeta.data.verify import VerifyReport, verify_dataset
from dgmeta.errors import DataError

data_app = typer.Typer(help="Inspect, verify and download datasets.", no_args_is_help=True)

#: beyond this many classes a per-class table is unreadable; show a per-domain summary instead
MAX_CLASS_ROWS = 20

NameArg = Annotated[str, typer.Argument(help="pacs, office_home, domainnet, pacs-mini or folder:PATH")]
DataRootOpt = Annotated[Optional[str], typer.Option("--data-root", help="folder holding the datasets", show_default="$DGMETA_DATA, else ./data")]
SplitOpt = Annotated[str, typer.Option("--split", help="official (published lists) or random (seeded 80/20 per domain)")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the random / holdout split")]


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _split_table(ds: DomainDataset) -> Table:
    table = Table(title=f"images per split ({ds.split_kind})")
    table.add_column("domain")
    for split in SPLITS:
        table.add_column(split, justify="right")
    for domain in ds.domains:
        table.add_row(domain, *(f"{len(ds.relative_samples(domain, split)):,}" for split in SPLITS))
    return table


def _class_table(report: VerifyReport) -> Table:
    ds, counts = report.dataset, report.class_counts
    if len(ds.classes) > MAX_CLASS_ROWS:
        table = Table(title=f"{ds.name}: images per domain")
        for column in ("domain", "images", "classes", "fewest per class", "most per class"):
            table.add_column(column, justify="left" if column == "domain" else "right")
        for domain in ds.domains:
            values = list(counts[domain].values())
            table.add_row(domain, f"{sum(values):,}", str(len(values)), f"{min(values):,}", f"{max(values):,}")
        return table
    table = Table(title=f"{ds.name}: images per class and domain", show_footer=True)
    table.add_column("class", footer="total")
    for domain in ds.domains:
        table.add_column(domain, justify="right", footer=f"{sum(counts[domain].values()):,}")
    table.add_column("total", justify="right", footer=f"{sum(sum(c.values()) for c in counts.values()):,}")
    for name in ds.classes:
        row = [counts[domain][name] for domain in ds.domains]
        table.add_row(name, *(f"{n:,}" for n in row), f"{sum(row):,}")
    return table


def _checksum_line(report: VerifyReport) -> str | None:
    if not report.checksums:
        return None
    tally: dict[str, int] = {}
    for _, status in report.checksums:
        tally[status] = tally.get(status, 0) + 1
    parts = ", ".join(f"{count} {status}" for status, count in sorted(tally.items()))
    return f"split lists ({len(report.checksums)}): {parts}"


@data_app.command("info")
def info(name: NameArg, data_root: DataRootOpt = None, split: SplitOpt = "official", seed: SeedOpt = 0) -> None:
    """Domains, classes and images per split of a dataset.

    Examples:

      dgmeta data info pacs-mini

      dgmeta data info pacs --data-root ../shared/data --split random --seed 1
    """
    ds = create_dataset(name, data_root, split, seed)
    console = Console()
    console.print(f"[bold]{ds.name}[/bold] at {ds.root}")
    console.print(f"domains ({len(ds.domains)}): {', '.join(ds.domains)}")
    console.print(f"classes ({len(ds.classes)}): {', '.join(ds.classes)}")
    console.print(f"split: {ds.split_kind}" + (f" (asked for {split})" if ds.split_kind != split else ""))
    files = ds.split_files()
    if files:
        console.print(f"split lists: {len(files)} files in {files[0].parent}")
    console.print(_split_table(ds))
    console.print(f"fingerprint: {ds.fingerprint()}")


@data_app.command("verify")
def verify(
    name: NameArg,
    data_root: DataRootOpt = None,
    split: SplitOpt = "official",
    seed: SeedOpt = 0,
    quiet: Annotated[bool, typer.Option("--quiet/--no-quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Count images, decode every file, check split lists (and their official checksums).

    Examples:

      dgmeta data verify pacs-mini

      dgmeta data verify pacs --data-root ../shared/data
    """
    ds = create_dataset(name, data_root, split, seed)
    report = verify_dataset(ds, progress=not quiet)
    console = Console()
    console.print(_class_table(report))
    console.print(_split_table(ds))
    checksums = _checksum_line(report)
    if checksums:
        console.print(checksums)
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(report.decoding(), soft_wrap=True)
    if not report.ok:
        raise DataError(report.summary(), "fix or replace the files named above, then run verify again")
    console.print(f"ok: {report.summary()}", soft_wrap=True)


@data_app.command("download")
def download(
    name: NameArg,
    data_root: DataRootOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for the source before giving up")] = DEFAULT_TIMEOUT,
    quiet: Annotated[bool, typer.Option("--quiet/--no-quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Download a public dataset (pacs, office_home, domainnet) into the data root.

    Example:

      dgmeta data download pacs --data-root ./data
    """
    target = download_dataset(name, data_root, timeout=timeout, progress=not quiet)
    Console().print(f"downloaded {name} to {target}; check it with `dgmeta data verify {name}`")
