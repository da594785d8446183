"""Decoded-image cache: cold (decode every JPEG) vs warm (open the memory-mapped cache) load of PACS.

Loads every list a leave-one-domain-out sweep needs (train, val and test of each domain) at
``--image-size`` twice, each time in a fresh process with the same, initially empty cache folder:
the first run decodes and writes the cache, the second only validates and maps it (key over
paths/sizes/mtimes + CRC32 of the array). Speedup = cold seconds / warm seconds.

    python benchmarks/speed/decode_cache.py --data-root ../shared/data --image-size 128

Writes benchmarks/results/decode_cache_<size>px.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: benchmarks/results/<group>/<script>[_<variant>].<ext> (benchmarks/README.md, "Results")
RESULTS = HERE.parent / "results" / "speed"


def load_all(data_root: str, image_size: int, cache_dir: str) -> dict:
    from dgmeta.data import create_dataset, load_images

    dataset = create_dataset("pacs", data_root)
    started = time.perf_counter()
    images = 0
    for domain in dataset.domains:
        for split in ("train", "val", "test"):
            array = load_images(dataset.samples(domain, split), image_size, cache_dir=cache_dir, progress=False)
            images += len(array)
    return {"seconds": time.perf_counter() - started, "images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(HERE.parents[2] / "shared" / "data"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--child-cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_cache:
        print(json.dumps(load_all(args.data_root, args.image_size, args.child_cache)))
        return

    with tempfile.TemporaryDirectory(prefix="dgmeta-decode-bench-") as cache:
        runs = []
        for phase in ("cold", "warm"):
            out = subprocess.run(
                [sys.executable, __file__, "--data-root", args.data_root, "--image-size", str(args.image_size), "--child-cache", cache],
                capture_output=True, text=True, check=True,
            )
            runs.append({"phase": phase, **json.loads(out.stdout.strip().splitlines()[-1]), "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg())})
        cache_bytes = sum(p.stat().st_size for p in Path(cache).rglob("*.npy"))
    cold, warm = runs
    report = {
        "command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "dataset": "pacs", "lists": "train, val and test of all 4 domains", "image_size": args.image_size,
        "images_loaded": cold["images"], "cache_bytes": cache_bytes,
        "cold_seconds": round(cold["seconds"], 2), "warm_seconds": round(warm["seconds"], 2),
        "speedup": round(cold["seconds"] / warm["seconds"], 1),
        "load_average": {r["phase"]: r["load_average"] for r in runs},
        "cpus": os.cpu_count(),
    }
    path = RESULTS / f"decode_cache_{args.image_size}px.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
