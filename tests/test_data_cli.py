"""`dgmeta data info | verify | download` and the download machinery."""

from __future__ import annotations

import time
import zipfile

import pytest
from fixtures_data import make_domainnet, make_pacs, write_image

from dgmeta.cli.main import main
from dgmeta.data import create_dataset
from dgmeta.data.download import SOURCES, RemoteFile, Source, download_dataset
from dgmeta.errors import DataError


def run(argv, capsys):
    """(exit code, stdout, stderr) of the `dgmeta` command."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_info_lists_domains_classes_and_split_counts(capsys):
    code, out, _ = run(["data", "info", "pacs-mini"], capsys)
    assert code == 0
    assert "art_painting, cartoon, photo, sketch" in out and "dog, elephant, giraffe" in out
    assert "split: official" in out and "fingerprint:" in out
    assert "│ photo        │    84 │  28 │  112 │" in out


def test_verify_passes_on_pacs_mini(capsys):
    code, out, err = run(["data", "verify", "pacs-mini", "-q"], capsys)
    assert code == 0, err
    assert "ok: pacs-mini: 448 images in 4 domains" in out and "every file decodes" in out
    assert "│ total    │          112 │     112 │   112 │    112 │   448 │" in out


def test_verify_flags_lists_that_are_not_the_official_pacs_lists(tmp_path, capsys):
    make_pacs(tmp_path)
    code, out, err = run(["data", "verify", "pacs", "--data-root", str(tmp_path), "-q"], capsys)
    assert code == 2
    assert err.startswith("error: pacs: 60 images") and "12 split list(s) differ from the official ones" in err
    assert len(err.strip().splitlines()) == 1
    assert "split lists (12): 12 differs" in out


def test_verify_names_undecodable_and_missing_files(tmp_path, capsys):
    make_domainnet(tmp_path)
    (tmp_path / "DomainNet" / "clipart" / "airplane" / "clipart_airplane_004.jpg").write_bytes(b"\x00garbage")
    (tmp_path / "DomainNet" / "sketch" / "airplane" / "sketch_airplane_001.jpg").unlink()
    write_image(tmp_path / "DomainNet" / "sketch" / "airplane" / "unlisted.jpg", (0, 0, 0))
    code, out, err = run(["data", "verify", "domainnet", "--data-root", str(tmp_path), "-q"], capsys)
    assert code == 2
    assert "2 file(s) unusable" in err and "clipart_airplane_004.jpg" in err and "image file missing" in err
    assert "note: 1 image(s) on disk are in no split list (sketch/airplane/unlisted.jpg)" in out


def test_verify_random_split_on_a_folder_dataset(tmp_path, capsys):
    make_pacs(tmp_path, lists_in="")
    code, out, _ = run(["data", "verify", f"folder:{tmp_path / 'PACS'}", "--split", "random", "-q"], capsys)
    assert code == 0 and "60 images in 4 domains" in out and "split random" in out


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    code, _, err = run(["data", "info", "pacs", "--data-root", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"looked for {tmp_path / 'PACS'}" in err


def test_download_of_an_unreachable_source_fails_fast_with_manual_instructions(tmp_path, capsys):
    dead = {"pacs": Source("PACS", "https://example.org/pacs", SOURCES["pacs"].layout, (RemoteFile("http://127.0.0.1:9/pacs.zip", "pacs.zip"),), SOURCES["pacs"].arrange)}
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        download_dataset("pacs", tmp_path, timeout=2, progress=False, sources=dead)
    assert time.monotonic() - start < 5
    text = info.value.one_line()
    assert "cannot download pacs: http://127.0.0.1:9/pacs.zip is unreachable" in text
    assert f"place it as {tmp_path}/PACS/<domain>/<class>/<image>" in text and "https://example.org/pacs" in text
    assert not (tmp_path / ".download-pacs").exists()


def test_the_real_sources_are_known():
    assert set(SOURCES) == {"pacs", "office_home", "domainnet"}
    assert len(SOURCES["domainnet"].files) == 18
    assert all(f.url.startswith("http") for s in SOURCES.values() for f in s.files)


def _zip_tree(folder, archive, prefix):
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, f"{prefix}/{path.relative_to(folder)}")


def test_download_extracts_and_arranges_a_dassl_style_pacs_archive(tmp_path):
    make_pacs(tmp_path / "src")
    archive = tmp_path / "pacs.zip"
    with zipfile.ZipFile(archive, "w") as bundle:  # pacs/images/<domain>/..., pacs/splits/*.txt
        for path in sorted((tmp_path / "src" / "PACS").rglob("*.png")):
            bundle.write(path, f"pacs/images/{path.relative_to(tmp_path / 'src' / 'PACS')}")
        for path in sorted((tmp_path / "src" / "pacs_splits").glob("*.txt")):
            bundle.write(path, f"pacs/splits/{path.name}")
    local = {"pacs": Source("PACS", "-", "-", (RemoteFile(archive.as_uri(), "pacs.zip"),), SOURCES["pacs"].arrange)}
    target = download_dataset("pacs", tmp_path / "root", progress=False, sources=local)
    assert target == tmp_path / "root" / "PACS"
    ds = create_dataset("pacs", tmp_path / "root")
    assert ds.split_kind == "official" and len(ds.samples("sketch", "test")) == 15
    with pytest.raises(DataError, match="already exists"):
        download_dataset("pacs", tmp_path / "root", progress=False, sources=local)


def test_download_refuses_archive_members_that_escape(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../../escaped.txt", "x")
    evil = {"pacs": Source("PACS", "-", "-", (RemoteFile(archive.as_uri(), "pacs.zip"),), SOURCES["pacs"].arrange)}
    with pytest.raises(DataError, match="outside the dataset folder"):
        download_dataset("pacs", tmp_path / "root", progress=False, sources=evil)
    assert not (tmp_path / "escaped.txt").exists()
