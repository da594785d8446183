"""benchmarks/accuracy/label_shift.py: the class shares it reports are the true ones, and it refuses a
model that does not reproduce its row's accuracy."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dgmeta.data import create_dataset, labels_of, load_images
from dgmeta.models.checkpoint import save_network
from dgmeta.models.network import create_network

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "accuracy" / "label_shift.py"
SIZE = 32


def load_script():
    spec = importlib.util.spec_from_file_location("label_shift", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prediction_report_counts_predictions_and_recall():
    module = load_script()
    labels = np.array([0, 0, 0, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 1, 2])
    report = module.prediction_report(predictions, labels, 3)
    assert report["accuracy"] == pytest.approx(3 / 6)
    assert report["predicted_distribution"] == pytest.approx([1 / 6, 4 / 6, 1 / 6])
    assert report["recall"] == pytest.approx([1 / 3, 1.0, 0.5])
    assert report["wrongly_predicted"] == pytest.approx([0, 3 / 6, 0])  # two 0s and one 2 called 1
    assert sum(report["wrongly_predicted"]) == pytest.approx(1 - report["accuracy"])
    assert module.total_variation(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def write_run(tmp_path: Path, test_acc: float | None) -> tuple[Path, Path, float]:
    """One saved random network for pacs-mini and a grid row naming it (with its true accuracy unless given)."""
    import torch

    torch.manual_seed(0)
    network = create_network("test_resnet", 7, "none").eval()
    run_id = "0" * 31 + "1"
    save_network(tmp_path / "mlartifacts" / run_id / "artifacts" / "model" / "network.pt", network, {"backbone": "test_resnet", "num_classes": 7, "image_size": SIZE})
    dataset = create_dataset("pacs-mini")
    samples = dataset.samples("sketch", "test")
    with torch.inference_mode():
        x = torch.from_numpy(np.array(load_images(samples, SIZE, progress=False))).float().div_(255)
        accuracy = float((network(x).argmax(1).numpy() == labels_of(samples)).mean())
    row = {"base": "erm", "seed": 0, "target": "sketch", "run_id": run_id, "test_acc": accuracy if test_acc is None else test_acc}
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(row) + "\n")
    return rows, tmp_path / "mlartifacts", accuracy


def run_script(rows: Path, artifacts: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", "pacs-mini", "--target", "sketch", "--rows", str(rows), "--artifacts", str(artifacts), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )


def test_report_holds_the_true_class_shares_and_the_model_accuracy(tmp_path):
    rows, artifacts, accuracy = write_run(tmp_path, None)
    done = run_script(rows, artifacts, tmp_path / "report.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    dataset = create_dataset("pacs-mini")
    truth = np.bincount(labels_of(dataset.samples("sketch", "test")), minlength=7)
    sources = np.concatenate([labels_of(dataset.samples(d, "train")) for d in dataset.domains if d != "sketch"])
    assert report["target_distribution"] == pytest.approx((truth / truth.sum()).tolist())
    assert report["source_distribution"] == pytest.approx((np.bincount(sources, minlength=7) / len(sources)).tolist())
    (run,) = report["runs"]
    assert run["accuracy"] == pytest.approx(accuracy)
    assert sum(run["predicted_distribution"]) == pytest.approx(1.0)
    assert (tmp_path / "report.md").read_text().count("|") > 20
    assert run["label"] == "erm" and "| erm s0 predicted" in (tmp_path / "report.md").read_text()


def test_a_meta_grid_row_is_named_by_its_arm(tmp_path):
    rows, artifacts, _ = write_run(tmp_path, None)
    row = json.loads(rows.read_text())
    rows.write_text(json.dumps({**row, "family": "erm-dg-critic", "arm": "critic"}) + "\n")
    done = run_script(rows, artifacts, tmp_path / "report.json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert run["label"] == "erm critic" and run["base"] == "erm"
    assert "| erm critic s0 predicted" in (tmp_path / "report.md").read_text()


def test_a_model_that_does_not_reproduce_its_row_is_refused(tmp_path):
    rows, artifacts, accuracy = write_run(tmp_path, None)
    rows.write_text(rows.read_text().replace(json.dumps(accuracy), json.dumps(accuracy + 0.1)))
    done = run_script(rows, artifacts, tmp_path / "report.json")
    assert done.returncode != 0
    assert "recomputes to" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "report.json").exists()


def test_an_iwdann_runs_learned_ratios_are_reported_against_the_truth(tmp_path):
    rows, artifacts, _ = write_run(tmp_path, None)
    ratios = [0.5, 1.0, 1.5, 2.0, 0.25, 1.0, 0.75]
    classes = create_dataset("pacs-mini").classes
    results = next(artifacts.iterdir()) / "artifacts" / "results.json"
    results.write_text(json.dumps({"learner": {"class_ratios": dict(zip(reversed(classes), reversed(ratios)))}}))
    done = run_script(rows, artifacts, tmp_path / "report.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    dataset = create_dataset("pacs-mini")
    per_source = [np.bincount(labels_of(dataset.samples(d, "train")), minlength=7) for d in dataset.domains if d != "sketch"]
    sampled = np.mean([counts / counts.sum() for counts in per_source], axis=0)
    assert report["sampled_source_distribution"] == pytest.approx(sampled.tolist())
    (run,) = report["runs"]
    assert run["class_ratios"] == pytest.approx(ratios)  # read by class name, not by position
    estimate = np.array(ratios) * sampled
    assert run["estimated_target_distribution"] == pytest.approx((estimate / estimate.sum()).tolist())
    assert "| truth |" in (tmp_path / "report.md").read_text()
