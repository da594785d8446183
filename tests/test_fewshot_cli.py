"""`dgmeta fewshot` end to end on a tiny folder dataset, and its one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from dgmeta.cli.fewshot_cmd import _warn_if_seen
from dgmeta.cli.main import main
from dgmeta.models.checkpoint import save_network
from dgmeta.models.network import create_network

CLASSES = {"apple": (220, 40, 40), "leaf": (40, 200, 60), "sky": (50, 80, 230)}
PER_CLASS = 6


@pytest.fixture
def dataset_root(tmp_path):
    """folder:PATH layout <domain>/<class>/<image>; classes are colours, domains differ in brightness."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    for domain, gain in (("d1", 1.0), ("d2", 0.6)):
        for name, colour in CLASSES.items():
            folder = root / domain / name
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):
                pixels = np.clip(np.array(colour) * gain + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    meta = {"backbone": "test_resnet", "num_classes": 3, "classes": sorted(CLASSES), "image_size": 16,
            "dataset": "folder", "domains": ["d1", "d2"], "train_domains": ["d1"], "target": "d2", "meta_mode": "none"}
    return save_network(tmp_path / "model" / "network.pt", create_network("test_resnet", 3), meta)


def test_fewshot_command_prints_logs_and_writes_the_report(dataset_root, model_file, tmp_path, capsys, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report.md"
    main(["fewshot", str(model_file), "--data", f"folder:{dataset_root}", "--domain", "d2", "--ways", "all", "--shots", "1,2",
          "--queries", "3", "--episodes", "6", "--method", "prototype", "--method", "linear", "--output", str(out), "-q"])
    captured = capsys.readouterr()
    assert "prototype" in captured.out and "linear" in captured.out and "MLflow run:" in captured.out
    assert "warning" not in captured.err  # d2 is the model's held-out domain

    runs = mlflow.search_runs(experiment_names=["dgmeta-fewshot"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["dgmeta.fewshot.domain"] == "d2"
    assert run.data.tags["dgmeta.fewshot.model"] == str(model_file)
    assert run.data.tags["dgmeta.fewshot.dataset"] == f"folder:{dataset_root}"
    assert {f"fewshot.{m}.{k}shot.{s}" for m in ("prototype", "linear") for k in (1, 2) for s in ("acc", "ci95")} <= set(run.data.metrics)
    # colour classes are easy even for a random tiny network: well above 1/3 chance
    assert run.data.metrics["fewshot.prototype.2shot.acc"] > 0.6
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"fewshot_episodes.csv", "fewshot_report.md"} <= artifacts
    assert "| prototype | 2 |" in out.read_text()


def test_warning_when_the_domain_was_seen_in_training(capsys):
    _warn_if_seen({"domains": ["a", "b", "c"], "target": "c"}, "a")
    assert "not a cross-domain evaluation" in capsys.readouterr().err
    _warn_if_seen({"domains": ["a", "b", "c"], "target": "c"}, "c")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--domain", "d9"], "unknown domain 'd9'"),
        (["--domain", "d2", "--shots", "1,5"], f"has only {PER_CLASS} images, fewer than shots + queries = 5 + 3"),
        (["--domain", "d2", "--ways", "5"], "--ways 5 but domain 'd2' has only 3 classes — pass --ways all"),
        (["--domain", "d2", "--method", "maml"], "train it with `dgmeta run --meta init`"),
        (["--domain", "d2", "--method", "protoype"], "did you mean 'prototype'"),
        (["--domain", "d2", "--shots", "one"], "--shots 'one' is not a comma-separated list"),
    ],
)
def test_bad_inputs_are_one_line_errors(dataset_root, model_file, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fewshot", str(model_file), "--data", f"folder:{dataset_root}", "--ways", "3", "--queries", "3", "--episodes", "2", "-q", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_unknown_model_is_a_one_line_error(dataset_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fewshot", str(tmp_path / "missing.pt"), "--data", f"folder:{dataset_root}", "--domain", "d2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: model file")
