"""Accuracy for the compute spent: one PACS target trained with the old and the new defaults.

Both recipes score the target at every evaluation (``--test-every-eval``: the numbers are for the
curve only; the reported model is still selected on source validation) and record the training
seconds spent so far (data + steps on this machine, evaluation excluded). The plot puts test
accuracy against those seconds, with the frozen-feature linear probe
(``linear_probe.py``) as the floor a fine-tuning recipe must clear; it is written to
``benchmarks/results/accuracy/`` and logged into each run's MLflow artifacts.

    python benchmarks/accuracy/compute_curve.py --target art_painting --seed 0
    python benchmarks/accuracy/compute_curve.py --plot-only   # redraw from the recorded JSONL

Resumable like the grid: finished recipes are read back from the JSONL, an interrupted one continues.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "accuracy"
#: recipe -> evaluation interval: dense enough for a curve, ~10 points each
CURVES = {"old-defaults": 25, "default": 60}
LABELS = {"old-defaults": "old defaults (SGD 0.01, 128 px, all layers)", "default": "new defaults (AdamW 1e-4, frozen BN + stem, 176/224 px)"}


def run_curves(args) -> None:
    for recipe, every in CURVES.items():
        cmd = [sys.executable, str(HERE / "recipe_grid.py"), "--recipes", recipe, "--targets", args.target,
               "--seeds", str(args.seed), "--out", str(args.out), "--test-every-eval", "--eval-every", str(every),
               "--experiment", "benchmarks-curve", "--tracking-uri", args.tracking_uri, "--dataset", args.dataset]
        cmd += args.smoke.split()
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"the {recipe} curve failed; finished curves are kept in {args.out}")


def plot(args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["target"] == args.target and r["seed"] == args.seed and "curve" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in rows:
        live = [p for p in row["curve"] if p["weights"] != "swad"]
        line, = ax.plot([p["train_seconds"] / 60 for p in live], [100 * p["test_acc"] for p in live], marker="o",
                        ms=3, label=LABELS.get(row["recipe"], row["recipe"]))
        for p in row["curve"]:
            if p["weights"] == "swad":
                ax.plot(p["train_seconds"] / 60, 100 * p["test_acc"], marker="*", ms=12, color=line.get_color(),
                        linestyle="none", label="  its SWAD average (the reported model)")
    probe_path = Path(args.probe)
    if probe_path.exists():
        floor = json.loads(probe_path.read_text())["targets"].get(args.target)
        if floor:
            ax.axhline(100 * floor["test_acc"], color="grey", linestyle="--",
                       label=f"linear probe on frozen features: {100 * floor['test_acc']:.1f}")
    ax.set_xlabel("training time, minutes on 2 CPU cores (evaluation excluded)")
    ax.set_ylabel(f"{args.target} test accuracy (%)")
    ax.set_title(f"PACS, target {args.target}, seed {args.seed}, tf_efficientnet_lite0")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png = RESULTS / f"compute_curve_{args.target}.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(args.tracking_uri)
    for row in rows:  # the same figure beside each run it shows
        try:
            client.log_artifact(row["run_id"], str(png))
        except Exception as exc:  # a store that moved: the PNG in benchmarks/results/ stands
            print(f"could not log the plot into run {row['run_id']}: {exc}", file=sys.stderr)
    print(f"wrote {png}")
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="art_painting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "compute_curve.jsonl")
    parser.add_argument("--probe", default=str(RESULTS / "linear_probe_224.json"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'benchmarks' / 'results' / 'accuracy.db'}")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--dataset", default="pacs")
    parser.add_argument("--smoke", default="", help='extra grid options for a smoke test, e.g. --smoke="--steps 4"')
    args = parser.parse_args()
    if not args.plot_only:
        run_curves(args)
    plot(args)


if __name__ == "__main__":
    main()
