"""Peak RSS and data-wait share of a real `dgmeta run`, measured from outside the run.

The run is a child process (``python -m dgmeta run ...``); its peak resident set size comes from
``os.wait4`` once it exits (and, sampled from /proc every 0.1 s, how much of it is anonymous
memory versus pages of memory-mapped files), and the data-wait share (``perf.data_wait_fraction``: seconds drawing
and augmenting batches / seconds of the training loop), images/s and test accuracy from its
MLflow run. RSS counts resident pages of the memory-mapped image cache too (file-backed and
reclaimable by the OS, but they are in the number).

    # full PACS (all 4 domains decoded and cached), default settings, one target
    python benchmarks/memory/run_memory.py pacs --data-root ../shared/data --target art_painting --steps 30
    # DomainNet layout: 3 domains x (200k train + 5k test) list entries (~600k, DomainNet's size);
    # lists over 50k images stream (train: 180k), the rest (val: 20k, test) use the disk cache
    python benchmarks/memory/run_memory.py domainnet-layout --entries 200000 --image-size 64 --steps 20

    # a meta mode (peak memory of MetaDA / Feature-Critic steps)
    python benchmarks/memory/run_memory.py pacs --steps 6 --out benchmarks/results/memory/run_memory_pacs_init.json --extra --meta init

Writes benchmarks/results/run_memory_<dataset>.json (or --out) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: benchmarks/results/<group>/<script>[_<variant>].<ext> (benchmarks/README.md, "Results")
RESULTS = HERE.parent / "results" / "memory"
sys.path.insert(0, str(HERE.parent / "tools"))

from _dgmeta_run import load_average, run_dgmeta  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=("pacs", "domainnet-layout"))
    parser.add_argument("--data-root", default=str(HERE.parents[2] / "shared" / "data"))
    parser.add_argument("--target", default=None, help="default: art_painting (pacs), sketch (domainnet-layout)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--entries", type=int, default=200_000, help="domainnet-layout: train-list entries per domain")
    parser.add_argument("--test-entries", type=int, default=5_000, help="domainnet-layout: test-list entries per domain")
    parser.add_argument("--cache", default="auto", help="auto | disk | stream")
    parser.add_argument("--out", type=Path, default=None, help="default: results/run_memory_<dataset>[_<cache>].json")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `dgmeta run` options")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dgmeta-run-memory-") as tmp:  # data, caches, MLflow store
        work = Path(tmp)
        if args.dataset == "pacs":
            dataset, data_root, target = "pacs", args.data_root, args.target or "art_painting"
        else:
            from domainnet_layout import make_domainnet_layout

            data_root = str(make_domainnet_layout(work / "data", args.entries, test_entries=args.test_entries))
            dataset, target = "domainnet", args.target or "sketch"
        run_args = [
            dataset, "--data-root", data_root, "--target", target, "--steps", str(args.steps), "--eval-every", str(args.steps),
            "--image-size", str(args.image_size), "--cache", args.cache, "--quiet", *args.extra,
        ]
        load_before = load_average()
        run = run_dgmeta(run_args, work, env={"DGMETA_CACHE": str(work / "cache")})
    report = {
        "command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "run_command": "dgmeta run " + " ".join(run_args).replace(str(work), "<tmp>"),
        "dataset": args.dataset, "target": target, "steps": args.steps, "image_size": args.image_size, "cache": args.cache,
        "list_entries_per_domain": {"train": args.entries, "test": args.test_entries} if args.dataset != "pacs" else None,
        "peak_rss_gib": round(run.peak_rss_gib, 3),
        "peak_rss_anon_gib (heap and tensors)": round(run.peak_rss_anon_gib, 3),
        "peak_rss_file_gib (memory-mapped image cache, libraries; reclaimable)": round(run.peak_rss_file_gib, 3),
        "data_wait_fraction": round(run.metrics.get("perf.data_wait_fraction", float("nan")), 4),
        "train_images_per_second": round(run.metrics.get("perf.images_per_second", float("nan")), 2),
        "test_acc": round(run.metrics.get("test_acc", float("nan")), 4),
        "wall_seconds": round(run.wall_seconds, 1),
        "load_average_before": load_before, "load_average_after": load_average(), "cpus": os.cpu_count(),
    }
    suffix = "" if args.cache == "auto" else f"_{args.cache}"
    path = args.out or RESULTS / f"run_memory_{args.dataset}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
