"""A grid of (base, meta, protocol) x targets x seeds on real PACS under one fixed CPU budget.

Prints and writes a Markdown table of test_acc per target and mean (with 95% CI over seeds when
there are several), the paired difference of each meta mode against `--meta none` for the same
(base, protocol, target, seed), and the wall time of each configuration relative to its base.

    python benchmarks/accuracy/pacs_grid.py --runs erm:none:dg,dann:none:msda --targets art_painting,cartoon,photo,sketch \
        --seeds 0 --steps 150 --image-size 96 --out benchmarks/results/learners.md

An ablation of a meta mode can reuse the `--meta none` runs of an earlier grid (same budget, targets and
seeds) as its paired reference instead of re-running them:

    python benchmarks/accuracy/pacs_grid.py --runs dann:init:msda --set meta_weight=0.3 \
        --baseline benchmarks/results/accuracy/pacs_grid_meta_dann_96px.json ... --out benchmarks/results/accuracy/pacs_grid_meta_dann_96px_weight0.3.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from dgmeta.process import tune_process

# an entry point: passive OpenMP waiting before anything loads torch (benchmarks/README.md, "Shared CPUs")
tune_process(sys.argv[1:])

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
#: benchmarks/results/<group>/<script>[_<variant>].<ext> (benchmarks/README.md, "Results")
RESULTS = HERE.parent / "results" / "accuracy"
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def ci95(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    return T95.get(n - 1, 1.96) * float(np.std(values, ddof=1)) / math.sqrt(n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", required=True, help="comma list of base:meta:protocol")
    parser.add_argument("--targets", default="art_painting,cartoon,photo,sketch")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--data-root", default=str(HERE.parents[2] / "shared" / "data"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{RESULTS / 'mlruns.db'}")
    parser.add_argument("--experiment", default="benchmarks-grid")
    parser.add_argument("--set", action="append", default=[], help="hyperparameter override key=value")
    parser.add_argument("--out", default=str(RESULTS / "pacs_grid.md"))
    parser.add_argument("--baseline", type=Path, default=None,
                        help="an earlier grid's JSON whose meta=none rows serve as the paired reference")
    args = parser.parse_args()

    from dgmeta.runs.config import RunConfig
    from dgmeta.runs.experiment import run_experiment

    targets = args.targets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    # this grid's published tables ran the recipe before issue 15: pin it so their commands still
    # reproduce them (the current defaults are measured by benchmarks/accuracy/recipe_grid.py)
    overrides = {"optimizer": "sgd", "lr": "0.01", "freeze_bn": "false", "freeze_levels": "0"}
    overrides.update(dict(item.split("=", 1) for item in args.set))
    rows = baseline_rows(args.baseline, args) if args.baseline else []
    for spec in args.runs.split(","):
        base, meta, protocol = spec.split(":")
        config = RunConfig(
            dataset="pacs", data_root=args.data_root, base=base, meta=meta, protocol=protocol, targets=targets,
            seeds=seeds, steps=args.steps, batch_size=args.batch_size, image_size=args.image_size,
            backbone=args.backbone, weights="imagenet", eval_every=args.eval_every, experiment=args.experiment,
            tracking_uri=args.tracking_uri, hparams=dict(overrides), quiet=True,
            average="none", train_image_size=args.image_size, test_every_eval=True,
        )
        started = time.time()
        result = run_experiment(config)
        seconds = time.time() - started
        for run in result.runs:
            rows.append({"base": base, "meta": meta, "protocol": protocol, "target": run.target, "seed": run.seed,
                         "test_acc": run.test_acc, "seconds": seconds / len(result.runs), "run_id": run.run_id})
        print(f"{spec}: mean test_acc {result.mean_test_acc() * 100:.2f} in {seconds:.0f}s", flush=True)
        # written after every configuration: a grid stopped halfway keeps what it measured
        write_results(Path(args.out), rows, targets, args)
    print(Path(args.out).read_text())


def baseline_rows(path: Path, args) -> list[dict]:
    """The meta=none rows of an earlier grid, refused unless it ran the same budget."""
    earlier = json.loads(path.read_text())
    same = ("steps", "image_size", "batch_size", "eval_every", "backbone")
    differ = [key for key in same if earlier["args"].get(key) != getattr(args, key)]
    if differ:
        raise SystemExit(f"--baseline {path} ran another budget ({', '.join(differ)} differ): rerun the reference instead")
    return [dict(row, baseline=str(path.name)) for row in earlier["rows"] if row["meta"] == "none"]


def write_results(out: Path, rows, targets, args) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))
    out.write_text(render(rows, targets, args))


def render(rows, targets, args) -> str:
    configs = list(dict.fromkeys((r["base"], r["meta"], r["protocol"]) for r in rows))
    lines = [
        f"PACS, official splits, {args.backbone} (ImageNet), {args.image_size} px, {args.steps} steps, "
        f"batch {args.batch_size} per source, seeds {args.seeds}; selection: training-domain validation."
        + (f" Overrides: {', '.join(args.set)}." if args.set else ""),
        "",
        "| base | meta | protocol | " + " | ".join(t[:1].upper() for t in targets) + " | avg | Δ vs meta=none (paired) | time / run vs base |",
        "|---|---|---|" + "---|" * len(targets) + "---|---|---|",
    ]
    for base, meta, protocol in configs:
        mine = [r for r in rows if (r["base"], r["meta"], r["protocol"]) == (base, meta, protocol)]
        cells = []
        for t in targets:
            accs = [r["test_acc"] * 100 for r in mine if r["target"] == t]
            ci = ci95(accs)
            cells.append(f"{np.mean(accs):.1f}" + ("" if math.isnan(ci) else f" ± {ci:.1f}"))
        per_seed = {}
        for r in mine:
            per_seed.setdefault(r["seed"], []).append(r["test_acc"] * 100)
        seed_means = [float(np.mean(v)) for v in per_seed.values()]
        avg_ci = ci95(seed_means)
        avg = f"{np.mean(seed_means):.1f}" + ("" if math.isnan(avg_ci) else f" ± {avg_ci:.1f}")
        delta, ratio = "", ""
        ref = [r for r in rows if (r["base"], r["meta"], r["protocol"]) == (base, "none", protocol)]
        if meta != "none" and ref:
            pairs = {(r["target"], r["seed"]): r["test_acc"] * 100 for r in ref}
            diffs = [r["test_acc"] * 100 - pairs[(r["target"], r["seed"])] for r in mine if (r["target"], r["seed"]) in pairs]
            if diffs:
                dci = ci95(diffs)
                delta = f"{np.mean(diffs):+.1f}" + ("" if math.isnan(dci) else f" ± {dci:.1f}") + f" (n={len(diffs)})"
            ratio = f"{np.mean([r['seconds'] for r in mine]) / np.mean([r['seconds'] for r in ref]):.2f}x"
        source = mine[0].get("baseline")
        if source:
            meta = f"{meta} (from {source}, no overrides)"
        lines.append(f"| {base} | {meta} | {protocol} | " + " | ".join(cells) + f" | {avg} | {delta} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
