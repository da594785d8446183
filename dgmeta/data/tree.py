"""Reading a ``<dataset>/<domain>/<class>/<image>`` tree safely and cheaply.

Nothing here stats individual image files: directory entries come from ``os.scandir``, whose
``is_dir``/``is_symlink`` answers come from the directory listing itself. Only symlinks are
resolved, because only they can lead outside the dataset folder.
"""

from __future__ import annotations

import errno
import os
import posixpath
from pathlib import Path

from dgmeta.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def safe_relative(rel: str, where: str) -> str:
    """``rel`` normalised, refusing anything that climbs out of the folder it is relative to.

    Purely lexical (no filesystem access), so it costs nothing per list line.
    """
    norm = posixpath.normpath(rel) if rel else "."
    if norm[0] == "/" or norm in (".", "..") or norm.startswith("../"):
        raise DataError(f"{where}: path {rel!r} points outside the dataset folder", "split lists may only name files inside the dataset folder; fix or replace the list")
    return norm


def ensure_inside(path: Path, root: Path, where: str) -> None:
    """Refuse a symlink (file or folder) whose target lies outside ``root`` (already resolved), is
    missing, or loops back on itself."""
    link = path.is_symlink()
    try:
        target = path.resolve(strict=link)  # a plain path may be missing: that is reported where it is read
    except FileNotFoundError:
        raise DataError(
            f"{where}: {path} is a broken symbolic link (to {os.readlink(path)}, which does not exist)",
            "restore its target or remove the link",
        ) from None
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError for a loop, later versions OSError(ELOOP)
        if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
            raise DataError(f"{where}: {path} is a symbolic link loop", "replace the link with the real file or folder") from None
        raise DataError(f"{where}: cannot follow the link {path}: {exc.strerror or exc}", "fix its permissions or remove the link") from None
    if link and target.is_dir() and (target == path.parent.resolve() or target in path.parent.resolve().parents):
        # a link to a folder that holds it: walking it would visit the same folders forever
        raise DataError(f"{where}: {path} is a symbolic link loop (to {target}, a folder that contains it)", "replace the link with the real file or folder")
    if target != root and root not in target.parents:
        raise DataError(f"{where}: {path} resolves to {target}, outside the dataset folder {root}", "replace the link with the real file or folder")


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as exc:
        raise DataError(f"cannot read folder {folder}: {exc.strerror or exc}", "fix its permissions (read and execute) or remove it") from None


def subfolders(folder: Path, root: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder``; symlinked ones must stay inside ``root``."""
    names = []
    for entry in _entries(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            ensure_inside(Path(entry.path), root, str(folder))  # a broken or looping link is refused, not skipped
        if entry.is_dir():
            names.append(entry.name)
    return sorted(names)


def image_files(folder: Path, root: Path) -> list[str]:
    """Sorted names of the image files directly inside ``folder``."""
    names = []
    for entry in _entries(folder):
        if not is_image_name(entry.name):
            continue
        if entry.is_symlink():
            ensure_inside(Path(entry.path), root, str(folder))
        if not entry.is_dir():
            names.append(entry.name)
    return sorted(names)


def scan_domain(root: Path, domain: str, layout_hint: str) -> dict[str, list[str]]:
    """``{class: [relative path, ...]}`` for one domain folder, refusing empty classes and stray images."""
    folder = root / domain
    classes = subfolders(folder, root)
    if not classes:
        stray = image_files(folder, root)
        if stray:
            raise DataError(f"wrong layout: images directly in {folder} (e.g. {stray[0]})", f"expected {layout_hint}")
        raise DataError(f"domain folder {folder} is empty", f"expected {layout_hint}")
    tree = {}
    for name in classes:
        files = image_files(folder / name, root)
        if not files:
            raise DataError(f"class folder {folder / name} holds no images", f"remove it or fill it; expected {layout_hint}")
        tree[name] = [f"{domain}/{name}/{file}" for file in files]
    return tree


def check_same_classes(classes_by_domain: dict[str, list[str]], root: Path) -> list[str]:
    """The class list shared by every domain; a domain with a different set is a layout error."""
    domains = list(classes_by_domain)
    reference = classes_by_domain[domains[0]]
    for domain in domains[1:]:
        theirs = classes_by_domain[domain]
        if theirs != reference:
            missing = sorted(set(reference) - set(theirs))
            extra = sorted(set(theirs) - set(reference))
            detail = f"lacks {missing[0]!r}" if missing else f"has extra {extra[0]!r}"
            raise DataError(
                f"domains disagree on classes: {root / domain} {detail} compared with {root / domains[0]}",
                "every domain needs the same class folders",
            )
    return list(reference)
