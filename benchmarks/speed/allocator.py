"""Training-step time and page faults under ``--memory lean`` (glibc's defaults) and ``--memory fast``.

The allocator setting is process-wide, so each measurement is a child process: it builds one
configuration of ``step_throughput.py`` (default ERM, tf_efficientnet_lite0, 128 px, 96 images),
sets the mode, warms up, then times ``--steps`` steps and counts their minor page faults and
kernel CPU seconds. Children run in pairs (lean, fast; the order alternates between pairs) so
both sides of a ratio share the machine's load; reported: medians over pairs of each mode's median
step, the median per-pair ratio, and faults / system seconds per step.

    python benchmarks/speed/allocator.py                       # ERM, 3 pairs of 4 steps
    python benchmarks/speed/allocator.py --config "init order 2" --pairs 2

Writes benchmarks/results/allocator[_<config>].json and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: benchmarks/results/<group>/<script>[_<variant>].<ext> (benchmarks/README.md, "Results")
RESULTS = HERE.parent / "results" / "speed"


def child(mode: str, config: str, steps: int, image_size: int, batch: int) -> dict:
    import resource
    import time

    sys.path.insert(0, str(HERE))
    import step_throughput  # noqa: E402 (imports dgmeta before torch)
    import torch

    from dgmeta.learners import Batch
    from dgmeta.training.allocator import configure_allocator

    changed = configure_allocator(mode)
    args = argparse.Namespace(backbone="tf_efficientnet_lite0", classes=7, image_size=image_size, batch=batch)
    torch.manual_seed(0)
    n, s = batch, image_size
    data = Batch(torch.rand(n, 3, s, s), torch.randint(0, 7, (n,)), torch.arange(n) % 3, torch.rand(n // 3, 3, s, s))
    step = step_throughput.build_step(config, args, data, None)
    for _ in range(2):  # warm-up: the heap settles into its steady layout
        step()
    seconds, faults, system = [], [], []
    for _ in range(steps):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        after = resource.getrusage(resource.RUSAGE_SELF)
        seconds.append(time.perf_counter() - start)
        faults.append(after.ru_minflt - before.ru_minflt)
        system.append(after.ru_stime - before.ru_stime)
    return {
        "mode": mode, "allocator_changed": changed, "seconds": seconds, "minor_faults": faults, "system_seconds": system,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="erm", help="a configuration of step_throughput.py")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--child", choices=("lean", "fast"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.config, args.steps, args.image_size, args.batch)))
        return

    runs: dict[str, list[dict]] = {"lean": [], "fast": []}
    for pair in range(args.pairs):
        for mode in (("lean", "fast") if pair % 2 == 0 else ("fast", "lean")):
            command = [sys.executable, __file__, "--child", mode, "--config", args.config, "--steps", str(args.steps),
                       "--image-size", str(args.image_size), "--batch", str(args.batch)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(f"pair {pair + 1}/{args.pairs} {mode}: median step {statistics.median(runs[mode][-1]['seconds']):.2f} s", file=sys.stderr)

    def median_of(mode: str, key: str) -> float:
        return statistics.median(statistics.median(run[key]) for run in runs[mode])

    ratios = [statistics.median(lean["seconds"]) / statistics.median(fast["seconds"]) for lean, fast in zip(runs["lean"], runs["fast"])]
    report = {
        "command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "config": args.config, "image_size": args.image_size, "batch": args.batch, "pairs": args.pairs, "steps": args.steps,
        "seconds_per_step_median": {mode: round(median_of(mode, "seconds"), 3) for mode in runs},
        "speedup_fast_vs_lean_per_pair": [round(r, 3) for r in ratios],
        "speedup_fast_vs_lean_median": round(statistics.median(ratios), 3),
        "minor_faults_per_step_median": {mode: int(median_of(mode, "minor_faults")) for mode in runs},
        "system_seconds_per_step_median": {mode: round(median_of(mode, "system_seconds"), 3) for mode in runs},
        "peak_rss_gib_median": {mode: round(statistics.median(run["peak_rss_gib"] for run in runs[mode]), 3) for mode in runs},
        "runs": runs,
    }
    suffix = "" if args.config == "erm" else "_" + args.config.replace(" ", "_").replace("+", "_")
    out = args.out or RESULTS / f"allocator{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
