"""The data scan does not trust the file system: unreadable folders, loops and broken links end as
one-line DataErrors (the CLI cases are in tests/test_bad_inputs.py)."""

from __future__ import annotations

import os

import pytest

from dgmeta.data import create_dataset
from dgmeta.data import tree
from dgmeta.errors import DataError
from tests.helpers import make_folder_dataset


def test_unreadable_folder_is_a_one_line_error(tmp_path, monkeypatch):
    root = make_folder_dataset(tmp_path / "toy", per_class=2)
    real = os.scandir

    def scandir(path):
        if str(path).endswith("d1/b"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(tree.os, "scandir", scandir)
    with pytest.raises(DataError) as info:
        create_dataset(f"folder:{root}", None, "random", seed=0)
    assert info.value.one_line() == f"cannot read folder {root}/d1/b: Permission denied — fix its permissions (read and execute) or remove it"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_for_real(tmp_path):
    root = make_folder_dataset(tmp_path / "toy", per_class=2)
    (root / "d0" / "a").chmod(0)
    try:
        with pytest.raises(DataError, match="cannot read folder .*d0/a: Permission denied"):
            create_dataset(f"folder:{root}", None, "random", seed=0)
    finally:
        (root / "d0" / "a").chmod(0o755)


@pytest.mark.parametrize("name, target, message", [
    ("d0/a/x.png", "y.png", "is a broken symbolic link (to y.png, which does not exist)"),
    ("d0/a/x.png", "x.png", "is a symbolic link loop"),
    ("d0/a/x.png", "../a/x.png", "is a symbolic link loop"),
    ("d0/z", "z", "is a symbolic link loop"),
    ("d0/z", "../..", "is a symbolic link loop (to"),
    ("d2/a/deeper.png", "..", "is a symbolic link loop (to"),
])
def test_links_that_loop_or_lead_nowhere(tmp_path, name, target, message):
    root = make_folder_dataset(tmp_path / "toy", per_class=2)
    (root / name).symlink_to(target)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_dataset(f"folder:{root}", None, "random", seed=0)


def test_links_that_stay_inside_and_exist_still_work(tmp_path):
    root = make_folder_dataset(tmp_path / "toy", per_class=2)
    (root / "d0" / "a" / "copy.png").symlink_to("d0_a_000.png")
    (root / "d1" / "b").rename(root / "d1" / ".b_real")  # hidden folders are not classes
    (root / "d1" / "b").symlink_to(".b_real")
    dataset = create_dataset(f"folder:{root}", None, "random", seed=0)
    paths = [sample.path.name for split in ("train", "val", "test") for sample in dataset.samples("d0", split)]
    assert "copy.png" in paths
