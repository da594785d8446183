"""Why a domain-adversarial learner can lose to ERM on a target: label shift, measured.

DANN aligns the *marginal* feature distributions of sources and target. When the target's class
proportions differ from the sources', perfect marginal alignment forces target images of classes
that are common in the target onto source regions of classes that are common in the sources
(Zhao et al., ICML 2019, "On learning invariant representations for domain adaptation"). The
signature is in the predictions: the adversarial model predicts the sources' frequent classes on
the target more often than the target holds them, and more often than ERM does.

This script measures that signature for finished grid runs (rows of ``recipe_grid.py`` JSONL
files, whose ``run_id`` names the run's ``model/network.pt``): per run, the predicted class
distribution on the target's test list, per-class accuracy and recall, next to the target's true
class distribution and the sources' (the training lists of the other domains). It recomputes each
run's test accuracy from the saved model and refuses to report a run whose number does not match
its row (so what is analysed is the model that produced the table).

    python benchmarks/accuracy/label_shift.py --target sketch \\
        --rows benchmarks/results/accuracy/erm_default.jsonl benchmarks/results/accuracy/dann_msda_default.jsonl \\
        --artifacts benchmarks/results/mlartifacts --out benchmarks/results/accuracy/label_shift_sketch.json

Runs whose model file is not under ``--artifacts`` are listed as skipped, not guessed. For IWDAN runs
(``results.json`` key ``learner``) it also reports the class ratios the run learned against the true
ratios, and the target class mix they imply.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from saved_runs import add_saved_run_arguments, find_model, logits, read_rows, run_label  # noqa: E402


def class_distribution(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes) / max(1, len(labels))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


def prediction_report(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Accuracy, the predicted class distribution, each class's recall, and the share of all images wrongly
    predicted as each class (where the errors go: a class the model over-predicts collects them)."""
    recall = [float((predictions[labels == c] == c).mean()) if (labels == c).any() else None for c in range(num_classes)]
    return {
        "accuracy": float((predictions == labels).mean()),
        "predicted_distribution": class_distribution(predictions, num_classes).tolist(),
        "recall": recall,
        "wrongly_predicted": [float(((predictions == c) & (labels != c)).mean()) for c in range(num_classes)],
    }


def learned_class_ratios(model: Path, classes: list[str]) -> np.ndarray | None:
    """The class ratios an IWDAN run ended with (its ``results.json``, key ``learner``), in ``classes``
    order; ``None`` for learners that estimate none, or runs from before the key existed."""
    results = model.parents[1] / "results.json"
    if not results.is_file():
        return None
    ratios = json.loads(results.read_text()).get("learner", {}).get("class_ratios")
    return None if ratios is None else np.array([ratios[c] for c in classes], dtype=np.float64)


def markdown(report: dict) -> str:
    classes = report["classes"]
    lines = [
        f"Target {report['target']}: class shares (%) of the sources' training lists, the target's test list, "
        "and each run's predictions on it; TV = total-variation distance to the target's true shares.",
        "",
        "| | " + " | ".join(classes) + " | TV to target |",
        "|---" * (len(classes) + 2) + "|",
    ]

    def row(name: str, dist: list[float]) -> str:
        tv = total_variation(np.asarray(dist), np.asarray(report["target_distribution"]))
        return f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in dist) + f" | {100 * tv:.1f} |"

    lines.append(row("sources (train)", report["source_distribution"]))
    lines.append(row("target (truth)", report["target_distribution"]))
    for run in report["runs"]:
        lines.append(row(f"{run['label']} s{run['seed']} predicted ({100 * run['accuracy']:.1f}% acc)", run["predicted_distribution"]))
    for run in report["runs"]:
        if run.get("estimated_target_distribution"):
            lines.append(row(f"{run['label']} s{run['seed']} estimated (its class ratios x sampled source shares)", run["estimated_target_distribution"]))
    estimated = [run for run in report["runs"] if run.get("class_ratios")]
    if estimated:
        truth = np.asarray(report["target_distribution"]) / np.asarray(report["sampled_source_distribution"])
        lines += ["", "Class ratios p_T(y) / p_S(y), p_S the class mix of the sampled source batches (each source equally):", "",
                  "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|",
                  "| truth | " + " | ".join(f"{v:.2f}" for v in truth) + " |"]
        for run in estimated:
            lines.append(f"| {run['label']} s{run['seed']} learned | " + " | ".join(f"{v:.2f}" for v in run["class_ratios"]) + " |")
    lines += ["", "Recall per class (%):", "", "| run | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for run in report["runs"]:
        lines.append(f"| {run['label']} s{run['seed']} | " + " | ".join("-" if r is None else f"{100 * r:.1f}" for r in run["recall"]) + " |")
    lines += ["", "Images wrongly predicted as each class (% of the test list; they sum to the error rate):", "",
              "| run | " + " | ".join(classes) + " | error |", "|---" * (len(classes) + 2) + "|"]
    for run in report["runs"]:
        lines.append(f"| {run['label']} s{run['seed']} | " + " | ".join(f"{100 * w:.1f}" for w in run["wrongly_predicted"])
                     + f" | {100 * (1 - run['accuracy']):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    add_saved_run_arguments(parser, default_data_root=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()

    from dgmeta.data import create_dataset, labels_of, load_images
    from dgmeta.models.checkpoint import load_network

    dataset = create_dataset(args.dataset, args.data_root)
    target = dataset.check_domain(args.target)
    k = dataset.num_classes
    test = dataset.samples(target, "test")
    labels = labels_of(test)
    per_source = [labels_of(dataset.samples(d, "train")) for d in dataset.domains if d != target]
    source_labels = np.concatenate(per_source)
    # batches draw the same number of images from every source, each uniformly over its training list
    sampled_source = np.mean([class_distribution(domain_labels, k) for domain_labels in per_source], axis=0)
    report = {
        "dataset": args.dataset,
        "target": target,
        "classes": list(dataset.classes),
        "source_distribution": class_distribution(source_labels, k).tolist(),
        "sampled_source_distribution": sampled_source.tolist(),
        "target_distribution": class_distribution(labels, k).tolist(),
        "runs": [],
        "skipped": [],
    }
    images_by_size: dict[int, np.ndarray] = {}
    for row in read_rows(args.rows, target):
        model = find_model(Path(args.artifacts), row["run_id"])
        if model is None:
            report["skipped"].append({"run_id": row["run_id"], "base": row["base"], "seed": row["seed"], "why": "model file not found"})
            continue
        network, meta = load_network(model)
        size = int(meta["image_size"])
        if size not in images_by_size:
            images_by_size[size] = load_images(test, size)
        result = prediction_report(logits(network, images_by_size[size]).argmax(1).numpy(), labels, k)
        if abs(result["accuracy"] - float(row["test_acc"])) > 1e-3:
            sys.exit(f"error: run {row['run_id']} recomputes to {result['accuracy']:.4f}, its row says {row['test_acc']:.4f}; "
                     "the model file is not the one the row was measured with")
        ratios = learned_class_ratios(model, list(dataset.classes))
        if ratios is not None:
            estimate = ratios * sampled_source
            result["class_ratios"] = ratios.tolist()
            result["estimated_target_distribution"] = (estimate / estimate.sum()).tolist()
        report["runs"].append({"run_id": row["run_id"], "base": row["base"], "label": run_label(row), "seed": row["seed"], **result})
        print(f"{run_label(row)} s{row['seed']}: {100 * result['accuracy']:.2f}%", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
