"""`--precision bf16` vs fp32 on real PACS: test accuracy, images/s and peak RSS of two short runs.

Same command, same seed, only ``--precision`` differs (bf16 = CPU autocast: convolutions and
matmuls in bfloat16, weights, optimizer and loss in fp32). The two runs go one after the other,
so their images/s are exposed to different machine load; the load-independent speed ratio is the
``erm@bf16`` row of benchmarks/speed/step_throughput.py (alternated within one process).

    python benchmarks/speed/precision.py --data-root ../shared/data --target photo --steps 120

Writes benchmarks/results/precision_<target>.json and prints it.
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
RESULTS = HERE.parent / "results" / "speed"
sys.path.insert(0, str(HERE.parent / "tools"))

from _dgmeta_run import load_average, run_dgmeta  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(HERE.parents[2] / "shared" / "data"))
    parser.add_argument("--target", default="photo")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", default="erm")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="dgmeta-precision-") as tmp:  # the MLflow stores
        work = Path(tmp)
        for precision in ("fp32", "bf16"):
            run_args = [
                "pacs", "--data-root", args.data_root, "--base", args.base, "--target", args.target, "--steps", str(args.steps),
                "--eval-every", str(max(1, args.steps // 3)), "--image-size", str(args.image_size), "--seed", str(args.seed),
                "--precision", precision, "--quiet",
            ]
            load_before = load_average()
            run = run_dgmeta(run_args, work)
            results[precision] = {
                "run_command": "dgmeta run " + " ".join(run_args),
                "test_acc": round(run.metrics["test_acc"], 4),
                "val_acc": round(run.metrics["val_acc"], 4),
                "selected_step": int(run.metrics["selected_step"]),
                "train_images_per_second": round(run.metrics["perf.images_per_second"], 2),
                "peak_rss_gib": round(run.peak_rss_gib, 3),
                "wall_seconds": round(run.wall_seconds, 1),
                "load_average_before": load_before, "load_average_after": load_average(),
            }
    fp32, bf16 = results["fp32"], results["bf16"]
    report = {
        "command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "dataset": "pacs", "target": args.target, "base": args.base, "steps": args.steps, "image_size": args.image_size,
        "seed": args.seed, "cpus": os.cpu_count(),
        "runs": results,
        "test_acc_difference_bf16_minus_fp32": round(bf16["test_acc"] - fp32["test_acc"], 4),
        "images_per_second_ratio_bf16_over_fp32 (sequential runs, load-dependent)": round(
            bf16["train_images_per_second"] / fp32["train_images_per_second"], 3
        ),
    }
    path = RESULTS / f"precision_{args.target}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
