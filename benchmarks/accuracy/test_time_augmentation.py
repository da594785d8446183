"""Test-time augmentation, measured on finished runs: does averaging the softmax of each target image
and its horizontal mirror (the training augmentation flips images, so both are in-distribution)
raise test accuracy, with nothing retrained?

Every run's saved ``model/network.pt`` is scored twice on its target's test list: plain (this must
reproduce the run's row, or the run is refused) and flip-averaged. Printed: per run both numbers,
and the paired gain over runs, mean ± 95% CI (t distribution) with the effect that many pairs
detect at 80% power. The flip doubles the cost of scoring the target and of every evaluation it is
applied to.

    python benchmarks/accuracy/test_time_augmentation.py --targets art_painting,cartoon,photo,sketch \\
        --rows benchmarks/results/accuracy/dann_msda_default.jsonl --artifacts benchmarks/results/mlartifacts \\
        --out benchmarks/results/accuracy/test_time_augmentation.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from saved_runs import add_saved_run_arguments, find_model, logits, read_rows, run_label  # noqa: E402


def paired_summary(gains: list[float]) -> dict:
    """Mean, 95% CI half-width and the 80%-power minimum detectable effect of paired gains."""
    from scipy import stats

    n = len(gains)
    mean = sum(gains) / n if n else float("nan")
    if n < 2:
        return {"pairs": n, "mean": mean, "ci95": float("nan"), "detectable": float("nan")}
    sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    detectable = float(stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    return {"pairs": n, "mean": mean, "ci95": half, "detectable": detectable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="art_painting,cartoon,photo,sketch")
    add_saved_run_arguments(parser, default_data_root=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()

    from dgmeta.data import create_dataset, labels_of, load_images
    from dgmeta.models.checkpoint import load_network

    dataset = create_dataset(args.dataset, args.data_root)
    runs, skipped = [], []
    for target in args.targets.split(","):
        test = dataset.samples(dataset.check_domain(target), "test")
        labels = labels_of(test)
        images = {}
        for row in read_rows(args.rows, target):
            model = find_model(Path(args.artifacts), row["run_id"])
            if model is None:
                skipped.append({"run_id": row["run_id"], "target": target, "seed": row["seed"], "why": "model file not found"})
                continue
            network, meta = load_network(model)
            size = int(meta["image_size"])
            if size not in images:
                images[size] = load_images(test, size)
            plain = logits(network, images[size])
            mirrored = logits(network, images[size], flip=True)
            accuracy = float((plain.argmax(1).numpy() == labels).mean())
            if abs(accuracy - float(row["test_acc"])) > 1e-3:
                sys.exit(f"error: run {row['run_id']} recomputes to {accuracy:.4f}, its row says {row['test_acc']:.4f}; "
                         "the model file is not the one the row was measured with")
            averaged = (plain.softmax(1) + mirrored.softmax(1)) / 2
            flip_accuracy = float((averaged.argmax(1).numpy() == labels).mean())
            runs.append({"run_id": row["run_id"], "base": row["base"], "label": run_label(row), "target": target, "seed": row["seed"],
                         "test_acc": accuracy, "flip_tta_acc": flip_accuracy})
            print(f"{run_label(row)} {target} s{row['seed']}: {100 * accuracy:.2f} -> {100 * flip_accuracy:.2f} with flip TTA", flush=True)
    summary = paired_summary([100 * (r["flip_tta_acc"] - r["test_acc"]) for r in runs])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": runs, "skipped": skipped, "gain_points": summary}, indent=1) + "\n")
    print(f"flip TTA gain: {summary['mean']:+.2f} ± {summary['ci95']:.2f} points over {summary['pairs']} runs "
          f"(detectable at 80% power: {summary['detectable']:.2f}); skipped {len(skipped)} without a model file")


if __name__ == "__main__":
    main()
