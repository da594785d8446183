"""Build dgmeta/samples/pacs-mini (package data): a small, seeded, downscaled subset of PACS in the PACS layout.

    python scripts/make_pacs_mini.py --source /work/shared/data --out dgmeta/samples/pacs-mini

For every domain and class it draws ``--train`` images from the official train list and ``--val``
from the official crossval list (seeded, independent of file-system order), stores them as
``--size`` px JPEGs (sketches too, renamed ``.png`` -> ``.jpg`` in the lists), and writes
``pacs_splits/<domain>_{train,crossval,test}_kfold.txt`` in the official format (test = train +
crossval, i.e. the whole mini domain). The same inputs give the same output bytes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from dgmeta.data.catalog import create_dataset
from dgmeta.data.images import open_rgb

MAX_BYTES = 5 * 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, type=Path, help="folder holding PACS/ and pacs_splits/ (the official lists)")
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. dgmeta/samples/pacs-mini")
    parser.add_argument("--train", type=int, default=12, help="images per domain and class from the official train list")
    parser.add_argument("--val", type=int, default=4, help="images per domain and class from the official crossval list")
    parser.add_argument("--size", type=int, default=96, help="side of the stored square JPEGs")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def choose(entries: list[tuple[str, int]], count: int, seed: int, salt: str) -> list[tuple[str, int]]:
    """``count`` entries drawn without replacement; depends only on the sorted entries, seed and salt."""
    entries = sorted(entries)
    if count > len(entries):
        raise SystemExit(f"error: {salt} has only {len(entries)} images, {count} requested")
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    return sorted(entries[i] for i in rng.choice(len(entries), size=count, replace=False))


def jpeg_name(rel: str) -> str:
    return str(Path(rel).with_suffix(".jpg"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pacs = create_dataset("pacs", args.source, split="official")
    out_images, out_lists = args.out / "PACS", args.out / "pacs_splits"
    for folder in (out_images, out_lists):  # only the two folders this script owns
        if folder.exists():
            shutil.rmtree(folder)
    out_lists.mkdir(parents=True)

    total = 0
    for domain in pacs.domains:
        chosen = {"train": [], "crossval": []}
        for label, name in enumerate(pacs.classes):
            for part, split, count in (("train", "train", args.train), ("crossval", "val", args.val)):
                entries = [e for e in pacs.relative_samples(domain, split) if e[1] == label]
                chosen[part].extend(choose(entries, count, args.seed, f"{domain}/{name}/{part}"))
        names = [jpeg_name(rel) for part in chosen.values() for rel, _ in part]
        if len(set(names)) != len(names):
            raise SystemExit(f"error: two {domain} files map to the same .jpg name")
        for rel, _ in chosen["train"] + chosen["crossval"]:
            target = out_images / jpeg_name(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            image = open_rgb(pacs.root / rel).resize((args.size, args.size), Image.Resampling.LANCZOS)
            image.save(target, format="JPEG", quality=args.quality, optimize=False, progressive=False)
            total += target.stat().st_size
        chosen["test"] = sorted(chosen["train"] + chosen["crossval"], key=lambda e: (e[1], e[0]))
        for part, entries in chosen.items():
            lines = "".join(f"{jpeg_name(rel)} {label + 1}\n" for rel, label in sorted(entries, key=lambda e: (e[1], e[0])))
            (out_lists / f"{domain}_{part}_kfold.txt").write_text(lines)
            total += len(lines)

    count = sum(1 for _ in out_images.rglob("*.jpg"))
    print(f"wrote {count} images ({total / 1e6:.2f} MB) to {args.out}")
    if total > MAX_BYTES:
        print(f"error: {total} bytes exceeds the {MAX_BYTES} byte budget; lower --train/--val/--size", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
