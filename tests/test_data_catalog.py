"""Dataset registry, layouts, split logic and every bad-input message."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fixtures_data import PACS_CLASSES, PACS_DOMAINS, make_domainnet, make_office_home, make_pacs, write_image

from dgmeta.data import DATASETS, DomainDataset, Sample, create_dataset, resolve_data_root
from dgmeta.data.official import PACS_SPLIT_SHA256
from dgmeta.errors import ConfigError, DataError


def rels(samples: list[Sample], root: Path) -> set[str]:
    return {str(s.path.relative_to(root)) for s in samples}


# --------------------------------------------------------------------------- PACS


def test_pacs_official_lists_give_train_val_test(tmp_path):
    make_pacs(tmp_path, per_class=5, val_per_class=2)
    ds = create_dataset("pacs", tmp_path)
    assert isinstance(ds, DomainDataset)
    assert ds.name == "pacs" and ds.split_kind == "official"
    assert ds.domains == list(PACS_DOMAINS) and ds.classes == sorted(PACS_CLASSES)
    assert ds.root == (tmp_path / "PACS").resolve()
    assert len(ds.split_files()) == 12
    for domain in ds.domains:
        train, val, test = (ds.samples(domain, s) for s in ("train", "val", "test"))
        assert (len(train), len(val), len(test)) == (9, 6, 15)
        assert rels(train, ds.root).isdisjoint(rels(val, ds.root))
        assert rels(train, ds.root) | rels(val, ds.root) == rels(test, ds.root)
        for sample in test:  # 1-based list labels became 0-based indices of the folder's class
            assert sample.path.is_file()
            assert ds.classes[sample.label] == sample.path.parent.name
        assert {s.label for s in val} == {0, 1, 2}


def test_pacs_lists_may_live_in_pacs_splits_folder_inside_pacs(tmp_path):
    make_pacs(tmp_path, lists_in="PACS/splits")
    ds = create_dataset("pacs", tmp_path)
    assert ds.split_kind == "official"
    assert all(p.parent == tmp_path / "PACS" / "splits" for p in ds.split_files())
    assert "splits" not in ds.domains


def test_fingerprint_is_stable_and_tracks_files_and_lists(tmp_path):
    make_pacs(tmp_path)
    first = create_dataset("pacs", tmp_path).fingerprint()
    assert first == create_dataset("pacs", tmp_path).fingerprint()
    listing = tmp_path / "pacs_splits" / "photo_train_kfold.txt"
    listing.write_text("".join(reversed(listing.read_text().splitlines(keepends=True))))
    reordered = create_dataset("pacs", tmp_path).fingerprint()
    assert reordered != first  # same files, different list bytes
    write_image(tmp_path / "PACS" / "photo" / "dog" / "extra.png", (1, 2, 3))
    random_before = create_dataset("pacs", tmp_path, split="random").fingerprint()
    (tmp_path / "PACS" / "photo" / "dog" / "extra.png").unlink()
    assert create_dataset("pacs", tmp_path, split="random").fingerprint() != random_before


def test_random_split_is_stratified_seeded_and_covers_the_domain(tmp_path):
    make_pacs(tmp_path, per_class=10)
    a = create_dataset("pacs", tmp_path, split="random", seed=0)
    assert a.split_kind == "random" and a.split_files() == []
    for domain in a.domains:
        train, val, test = (a.samples(domain, s) for s in ("train", "val", "test"))
        assert len(test) == 30
        assert rels(train, a.root).isdisjoint(rels(val, a.root))
        assert rels(train, a.root) | rels(val, a.root) == rels(test, a.root)
        for label in range(3):  # 80/20 within every class
            assert sum(s.label == label for s in val) == 2
            assert sum(s.label == label for s in train) == 8
    again = create_dataset("pacs", tmp_path, split="random", seed=0)
    other = create_dataset("pacs", tmp_path, split="random", seed=1)
    assert all(a.samples(d, "val") == again.samples(d, "val") for d in a.domains)
    assert any(a.samples(d, "val") != other.samples(d, "val") for d in a.domains)
    # domains are shuffled independently (salted by name): same index pattern would be suspicious
    pattern = [[int(s.path.stem[-3:]) for s in a.samples(d, "val")] for d in a.domains]
    assert len({tuple(p) for p in pattern}) > 1


def test_random_split_keeps_a_val_image_in_tiny_classes(tmp_path):
    make_pacs(tmp_path, per_class=2)
    ds = create_dataset("pacs", tmp_path, split="random")
    assert all(len(ds.samples(d, "val")) == 3 and len(ds.samples(d, "train")) == 3 for d in ds.domains)


# --------------------------------------------------------------------------- Office-Home, DomainNet, folder


def test_office_home_has_no_official_split_and_records_random(tmp_path):
    make_office_home(tmp_path, per_class=5)
    ds = create_dataset("office_home", tmp_path, split="official", seed=3)
    assert ds.split_kind == "random"
    assert ds.domains == ["Art", "Clipart", "Product", "Real_World"]
    assert ds.classes == ["Alarm_Clock", "Backpack", "Batteries"]
    assert [len(ds.samples("Art", s)) for s in ("train", "val", "test")] == [12, 3, 15]


def test_domainnet_official_lists_train_val_holdout_and_test(tmp_path):
    make_domainnet(tmp_path, per_class=12, test_per_class=2)
    ds = create_dataset("domainnet", tmp_path, seed=0)
    assert ds.split_kind == "official" and ds.domains == ["clipart", "sketch"]
    assert len(ds.split_files()) == 4
    for domain in ds.domains:
        train, val, test = (ds.samples(domain, s) for s in ("train", "val", "test"))
        assert len(test) == 6 and all(int(s.path.stem[-3:]) >= 10 for s in test)
        assert len(val) == 3 and len(train) == 27  # 10% of each class's 10 listed train images
        assert rels(train, ds.root).isdisjoint(rels(val, ds.root))
        assert rels(train, ds.root).isdisjoint(rels(test, ds.root))
        assert all(ds.classes[s.label] == s.path.parent.name for s in train + val + test)
    assert create_dataset("domainnet", tmp_path, seed=0).samples("clipart", "val") == ds.samples("clipart", "val")
    assert create_dataset("domainnet", tmp_path, seed=5).samples("clipart", "val") != ds.samples("clipart", "val")


def test_domainnet_builds_from_lists_without_touching_image_files(tmp_path):
    make_domainnet(tmp_path, lists_in="DomainNet/splits")
    (tmp_path / "DomainNet" / "sketch" / "airplane" / "sketch_airplane_001.jpg").unlink()
    ds = create_dataset("domainnet", tmp_path)  # a missing listed file is not looked for here
    assert any(s.path.name == "sketch_airplane_001.jpg" for s in ds.samples("sketch", "train") + ds.samples("sketch", "val"))


def test_domainnet_random_split_scans_the_folders(tmp_path):
    make_domainnet(tmp_path, per_class=10)
    ds = create_dataset("domainnet", tmp_path, split="random")
    assert ds.split_kind == "random"
    assert [len(ds.samples("sketch", s)) for s in ("train", "val", "test")] == [24, 6, 30]


def test_folder_dataset_reads_any_domain_class_tree(tmp_path):
    for domain in ("day", "night"):
        for label, name in enumerate(("cat", "car")):
            for i in range(5):
                write_image(tmp_path / "tree" / domain / name / f"{i}.jpg", (label * 100, 0, 0))
    ds = create_dataset(f"folder:{tmp_path / 'tree'}", split="official")
    assert ds.domains == ["day", "night"] and ds.classes == ["car", "cat"]
    assert ds.split_kind == "random"
    assert len(ds.samples("night", "test")) == 10 and len(ds.samples("night", "val")) == 2


def test_registry_lists_every_dataset():
    assert set(DATASETS.names()) == {"pacs", "pacs-mini", "office_home", "domainnet", "folder"}


# --------------------------------------------------------------------------- data root


def test_resolve_data_root_prefers_argument_then_env_then_cwd(tmp_path, monkeypatch):
    (tmp_path / "arg").mkdir()
    (tmp_path / "env").mkdir()
    (tmp_path / "cwd" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_data_root() == tmp_path / "cwd" / "data"
    monkeypatch.setenv("DGMETA_DATA", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"


def test_missing_data_root_says_where_it_came_from(tmp_path, monkeypatch):
    monkeypatch.setenv("DGMETA_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"data root .*nowhere does not exist \(from DGMETA_DATA\)"):
        create_dataset("pacs")


def test_missing_dataset_folder_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as info:
        create_dataset("pacs", tmp_path)
    text = info.value.one_line()
    assert str(tmp_path / "PACS") in text and "dgmeta data download pacs" in text and "\n" not in text


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "PACS" / "kfold").mkdir(), r"unexpected folder .*kfold"),
        (lambda root: shutil.rmtree(root / "PACS" / "cartoon"), r"no domain folder 'cartoon'"),
        (lambda root: write_image(root / "PACS" / "photo" / "stray.png", (0, 0, 0)), None),
        (lambda root: [p.unlink() for p in (root / "PACS" / "photo" / "dog").iterdir()], r"photo/dog holds no images"),
        (lambda root: shutil.rmtree(root / "PACS" / "sketch" / "giraffe"), r"domains disagree on classes: .*sketch lacks 'giraffe'"),
        (lambda root: (root / "PACS" / "photo" / "dog" / "photo_dog_000.png").unlink(), r"photo_train_kfold.txt names a missing file .*photo_dog_000.png"),
        (lambda root: (root / "pacs_splits" / "cartoon_crossval_kfold.txt").unlink(), r"cartoon_crossval_kfold.txt not found .*--split random"),
    ],
)
def test_bad_pacs_layouts_fail_with_one_clear_line(tmp_path, damage, message):
    make_pacs(tmp_path)
    damage(tmp_path)
    if message is None:  # a stray image beside the class folders is ignored, not mistaken for a class
        assert create_dataset("pacs", tmp_path).classes == sorted(PACS_CLASSES)
        return
    with pytest.raises(DataError, match=message) as info:
        create_dataset("pacs", tmp_path)
    assert "\n" not in info.value.one_line() and info.value.hint


def test_empty_domain_and_images_directly_in_a_domain(tmp_path):
    make_pacs(tmp_path, lists_in="")
    shutil.rmtree(tmp_path / "PACS" / "photo")
    (tmp_path / "PACS" / "photo").mkdir()
    with pytest.raises(DataError, match=r"domain folder .*photo is empty"):
        create_dataset("pacs", tmp_path, split="random")
    write_image(tmp_path / "PACS" / "photo" / "a.png", (0, 0, 0))
    with pytest.raises(DataError, match=r"wrong layout: images directly in .*photo"):
        create_dataset("pacs", tmp_path, split="random")


def test_label_mismatch_is_refused(tmp_path):
    make_pacs(tmp_path)
    listing = tmp_path / "pacs_splits" / "art_painting_train_kfold.txt"
    lines = listing.read_text().splitlines()
    lines[0] = lines[0].rsplit(" ", 1)[0] + " 3"  # a dog labelled as giraffe
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"art_painting_train_kfold.txt line 1: label 3 does not match class folder 'dog' \(expected 1\)"):
        create_dataset("pacs", tmp_path)


def test_domainnet_labels_are_zero_based(tmp_path):
    make_domainnet(tmp_path)
    listing = tmp_path / "DomainNet" / "clipart_test.txt"
    listing.write_text("".join(f"{line.rsplit(' ', 1)[0]} {int(line.rsplit(' ', 1)[1]) + 1}\n" for line in listing.read_text().splitlines()))
    with pytest.raises(DataError, match="0-based"):
        create_dataset("domainnet", tmp_path).samples("clipart", "test")


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "art_painting/../../../etc/passwd"])
def test_split_list_paths_outside_the_data_root_are_refused(tmp_path, entry):
    make_pacs(tmp_path)
    listing = tmp_path / "pacs_splits" / "art_painting_train_kfold.txt"
    listing.write_text(f"{entry} 1\n" + listing.read_text())
    with pytest.raises(DataError, match="outside the dataset folder"):
        create_dataset("pacs", tmp_path)


def test_symlinks_leading_outside_the_dataset_are_refused(tmp_path):
    make_pacs(tmp_path / "root", lists_in="")
    outside = tmp_path / "outside"
    write_image(outside / "secret.png", (0, 0, 0))
    link = tmp_path / "root" / "PACS" / "photo" / "dog" / "link.png"
    os.symlink(outside / "secret.png", link)
    with pytest.raises(DataError, match="outside the dataset folder"):
        create_dataset("pacs", tmp_path / "root", split="random")
    link.unlink()
    os.symlink(outside, tmp_path / "root" / "PACS" / "photo" / "zebra")
    with pytest.raises(DataError, match="outside the dataset folder"):
        create_dataset("pacs", tmp_path / "root", split="random")


def test_a_symlinked_dataset_folder_is_fine(tmp_path):
    make_pacs(tmp_path / "elsewhere")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "elsewhere" / "PACS", tmp_path / "root" / "PACS")
    os.symlink(tmp_path / "elsewhere" / "pacs_splits", tmp_path / "root" / "pacs_splits")
    assert len(create_dataset("pacs", tmp_path / "root").samples("photo", "test")) == 15


def test_unknown_names_domains_and_splits_are_config_errors(tmp_path):
    make_pacs(tmp_path)
    with pytest.raises(ConfigError, match="did you mean 'pacs'"):
        create_dataset("pacss", tmp_path)
    with pytest.raises(ConfigError, match="unknown split 'kfold'"):
        create_dataset("pacs", tmp_path, split="kfold")
    ds = create_dataset("pacs", tmp_path)
    with pytest.raises(ConfigError, match="choose one of: art_painting, cartoon, photo, sketch"):
        ds.check_domain("painting")
    with pytest.raises(ConfigError, match="choose one of: train, val, test"):
        ds.samples("photo", "validation")
    with pytest.raises(ConfigError, match="folder:PATH"):
        create_dataset("folder")


# --------------------------------------------------------------------------- pacs-mini and the real PACS


def test_pacs_mini_ships_with_the_repo():
    ds = create_dataset("pacs-mini")
    assert ds.domains == list(PACS_DOMAINS)
    assert ds.classes == ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    for domain in ds.domains:
        val = ds.samples(domain, "val")
        assert len(ds.samples(domain, "test")) == len(ds.samples(domain, "train")) + len(val)
        assert all(sum(s.label == k for s in val) >= 3 for k in range(7))
    total = sum(p.stat().st_size for p in ds.root.parent.rglob("*") if p.is_file())
    assert total <= 5 * 1024 * 1024


def test_pacs_mini_can_live_under_the_data_root(tmp_path):
    make_pacs(tmp_path / "pacs-mini")
    ds = create_dataset("pacs-mini", tmp_path)
    assert ds.root == (tmp_path / "pacs-mini" / "PACS").resolve() and ds.classes == sorted(PACS_CLASSES)


def test_pacs_mini_lists_are_drawn_from_the_official_lists(shared_data):
    mini = create_dataset("pacs-mini")
    full = create_dataset("pacs", shared_data)
    for domain in mini.domains:
        for split in ("train", "val"):
            official = {(str(Path(rel).with_suffix("")), label) for rel, label in full.relative_samples(domain, split)}
            for rel, label in mini.relative_samples(domain, split):
                assert (str(Path(rel).with_suffix("")), label) in official


def test_full_pacs_has_9991_images_and_official_lists(shared_data):
    ds = create_dataset("pacs", shared_data)
    counts = {d: len(ds.samples(d, "test")) for d in ds.domains}
    assert counts == {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929}
    assert sum(counts.values()) == 9991
    sums = dict(line.split()[::-1] for line in (shared_data / "pacs_splits" / "SHA256SUMS").read_text().splitlines())
    assert sums == PACS_SPLIT_SHA256


def test_make_pacs_mini_reproduces_the_shipped_sample(shared_data, tmp_path):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    repo = Path(__file__).resolve().parents[1]
    shipped = repo / "dgmeta" / "samples" / "pacs-mini"
    subprocess.run([sys.executable, str(repo / "scripts" / "make_pacs_mini.py"), "--source", str(shared_data), "--out", str(tmp_path / "mini")], check=True, capture_output=True)
    made = sorted(p.relative_to(tmp_path / "mini") for p in (tmp_path / "mini").rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    for rel in made:
        if rel.suffix == ".txt":
            assert (tmp_path / "mini" / rel).read_bytes() == (shipped / rel).read_bytes()
        else:  # JPEG bytes may differ across libjpeg versions; the pixels may not
            ours, theirs = (np.asarray(Image.open(root / rel), dtype=np.int16) for root in (tmp_path / "mini", shipped))
            assert np.abs(ours - theirs).mean() < 1.0
