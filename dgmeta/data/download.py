"""`dgmeta data download`: fetch a public dataset and arrange it into the layout the loaders read.

Archives are streamed to ``<data-root>/.download-<name>/`` and extracted there (refusing members
that would land outside it); the dataset folders are then moved into place. An unreachable source
fails within ``timeout`` seconds with a one-line message telling how to place a copy by hand.
"""

from __future__ import annotations

import shutil
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dgmeta.data.catalog import DOMAINNET_LAYOUT, OFFICE_HOME_LAYOUT, PACS_LAYOUT, resolve_data_root
from dgmeta.data.official import DOMAINNET_DOMAINS, OFFICE_HOME_DOMAINS, PACS_DOMAINS
from dgmeta.data.parallel import progress_bar
from dgmeta.data.tree import safe_relative
from dgmeta.errors import ConfigError, DataError

DEFAULT_TIMEOUT = 5.0
_BLOCK = 1 << 20


def _drive(file_id: str) -> str:
    # the direct form that skips Google Drive's "cannot scan for viruses" page for large files
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


@dataclass(frozen=True)
class RemoteFile:
    url: str
    filename: str

    @property
    def is_archive(self) -> bool:
        return self.filename.endswith(".zip")


@dataclass(frozen=True)
class Source:
    folder: str  # what ends up under the data root
    page: str  # where a person downloads it by hand
    layout: str
    files: tuple[RemoteFile, ...]
    arrange: Callable[[Path, Path], None]  # (staging folder with everything extracted, data root)


def _find_parent_of(staging: Path, children: tuple[str, ...], depth: int = 4) -> Path:
    """The folder under ``staging`` that directly holds all of ``children`` (archives nest differently)."""
    frontier = [staging]
    for _ in range(depth):
        for folder in frontier:
            if all((folder / child).is_dir() for child in children):
                return folder
        frontier = [sub for folder in frontier for sub in sorted(folder.iterdir()) if sub.is_dir()]
    raise DataError(f"downloaded archive has no folder holding {', '.join(children)}", "the source may have changed; place a copy by hand")


def _move_into(source: Path, target: Path) -> None:
    if target.exists():
        raise DataError(f"{target} already exists", "move it away (or run `dgmeta data verify`) before downloading again")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))


def _arrange_pacs(staging: Path, data_root: Path) -> None:
    images = _find_parent_of(staging, PACS_DOMAINS)
    lists = next((p.parent for p in sorted(staging.rglob("*_train_kfold.txt"))), None)
    if lists is None:
        raise DataError("downloaded PACS archive has no *_kfold.txt split lists", "place the official lists in <data-root>/pacs_splits/ by hand")
    _move_into(lists, data_root / "pacs_splits")
    _move_into(images, data_root / "PACS")


def _arrange_office_home(staging: Path, data_root: Path) -> None:
    images = _find_parent_of(staging, ("Art", "Clipart", "Product"))
    if (images / "Real World").is_dir():  # the original archive spells it with a space
        (images / "Real World").rename(images / "Real_World")
    if not (images / OFFICE_HOME_DOMAINS[-1]).is_dir():
        raise DataError("downloaded Office-Home archive has no Real_World folder", "place a copy by hand")
    _move_into(images, data_root / "OfficeHome")


def _arrange_domainnet(staging: Path, data_root: Path) -> None:
    target = data_root / "DomainNet"
    target.mkdir(parents=True, exist_ok=True)
    for domain in DOMAINNET_DOMAINS:
        _move_into(_find_parent_of(staging, (domain,)) / domain, target / domain)
    for listing in sorted(staging.glob("*.txt")):
        _move_into(listing, target / listing.name)


_DOMAINNET_BASE = "http://csr.bu.edu/ftp/visda/2019/multi-source"
_DOMAINNET_ARCHIVES = {"clipart": "groundtruth/clipart.zip", "painting": "groundtruth/painting.zip"}

SOURCES: dict[str, Source] = {
    "pacs": Source(
        folder="PACS",
        page="https://domaingeneralization.github.io/#data (Li et al., ICCV 2017)",
        layout=PACS_LAYOUT,
        # Dassl's mirror bundles the images with the official kfold lists (pacs/images, pacs/splits)
        files=(RemoteFile(_drive("1m4X4fROCCXMO0lRLrr6Zz9Vb3974NWhE"), "pacs.zip"),),
        arrange=_arrange_pacs,
    ),
    "office_home": Source(
        folder="OfficeHome",
        page="https://www.hemanthdv.org/officeHomeDataset.html (Venkateswara et al., CVPR 2017)",
        layout=OFFICE_HOME_LAYOUT,
        # DomainBed's mirror of OfficeHomeDataset_10072016.zip
        files=(RemoteFile(_drive("1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"), "office_home.zip"),),
        arrange=_arrange_office_home,
    ),
    "domainnet": Source(
        folder="DomainNet",
        page="http://ai.bu.edu/M3SDA/ (Peng et al., ICCV 2019)",
        layout=DOMAINNET_LAYOUT,
        files=tuple(
            remote
            for domain in DOMAINNET_DOMAINS
            for remote in (
                RemoteFile(f"{_DOMAINNET_BASE}/{_DOMAINNET_ARCHIVES.get(domain, domain + '.zip')}", f"{domain}.zip"),
                RemoteFile(f"{_DOMAINNET_BASE}/domainnet/txt/{domain}_train.txt", f"{domain}_train.txt"),
                RemoteFile(f"{_DOMAINNET_BASE}/domainnet/txt/{domain}_test.txt", f"{domain}_test.txt"),
            )
        ),
        arrange=_arrange_domainnet,
    ),
}


def _manual_hint(name: str, source: Source, data_root: Path) -> str:
    layout = source.layout.replace("<data-root>", str(data_root))
    return f"download it by hand from {source.page} and place it as {layout}, then run `dgmeta data verify {name}`"


def _check_resolves(url: str, timeout: float) -> None:
    """Name lookup is not covered by urlopen's timeout; bound it ourselves so an offline machine fails fast."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise urllib.error.URLError(f"looking up {host} took more than {timeout:g}s")
    if outcome[0] is not None:
        raise urllib.error.URLError(outcome[0])


def _fetch(remote: RemoteFile, target: Path, timeout: float, progress: bool, hint: str, name: str) -> None:
    partial = target.with_name(target.name + ".part")
    try:
        _check_resolves(remote.url, timeout)
        with urllib.request.urlopen(remote.url, timeout=timeout) as response:
            kind = response.headers.get("Content-Type", "")
            if remote.is_archive and kind.startswith("text/html"):
                raise DataError(f"cannot download {name}: {remote.url} returned a web page instead of {remote.filename} (quota or login page)", hint)
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = progress_bar() if progress else None
            with open(partial, "wb") as out:
                if bar is None:
                    shutil.copyfileobj(response, out, _BLOCK)
                else:
                    with bar:
                        task = bar.add_task(f"downloading {remote.filename}", total=total)
                        for block in iter(lambda: response.read(_BLOCK), b""):
                            out.write(block)
                            bar.advance(task, len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"cannot download {name}: {remote.url} is unreachable ({reason})", hint) from None
    partial.replace(target)


def _extract(archive: Path, into: Path, hint: str) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                safe_relative(member.filename, archive.name)  # refuse ../ and absolute members
            bundle.extractall(into)
    except zipfile.BadZipFile:
        raise DataError(f"{archive} is not a valid zip archive", hint) from None
    archive.unlink()


def download_dataset(name: str, data_root: str | None = None, timeout: float = DEFAULT_TIMEOUT, progress: bool = True, sources: dict[str, Source] | None = None) -> Path:
    """Download ``name`` into the data root and return its folder; fails fast when the source is unreachable."""
    sources = SOURCES if sources is None else sources
    if name not in sources:
        raise ConfigError(f"no download source for dataset {name!r}", f"downloadable: {', '.join(sorted(sources))}")
    source = sources[name]
    root = resolve_data_root(data_root, must_exist=False)
    target = root / source.folder
    if target.exists():
        raise DataError(f"{target} already exists", f"run `dgmeta data verify {name}` to check it, or move it away to download again")
    hint = _manual_hint(name, source, root)
    staging = root / f".download-{name}"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for remote in source.files:
            local = staging / remote.filename
            _fetch(remote, local, timeout, progress, hint, name)
            if remote.is_archive:
                _extract(local, staging, hint)
        source.arrange(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
