"""End-to-end `dgmeta run` with ERM on a tiny separable fixture, and its MLflow record."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from dgmeta.cli.main import main
from dgmeta.runs.config import RunConfig
from dgmeta.runs.experiment import run_experiment
from tests.helpers import make_folder_dataset

TINY = dict(backbone="test_resnet", weights="none", image_size=24, train_image_size=24, batch_size=8, eval_every=10, quiet=True)


@pytest.fixture
def folder_dataset(tmp_path):
    return make_folder_dataset(tmp_path / "toy", domains=("d0", "d1", "d2"), classes=("a", "b"), per_class=16)


def test_erm_beats_chance_and_is_tracked(folder_dataset, tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    config = RunConfig(
        dataset=f"folder:{folder_dataset}", base="erm", targets=["d2"], steps=40, seeds=[0],
        split="random", tracking_uri=uri, experiment="toy", hparams={"lr": 0.05, "optimizer": "sgd"}, average="swad", **TINY,
    )
    result = run_experiment(config)
    (run,) = result.runs
    assert run.test_acc >= 0.85, f"ERM should separate the classes on the unseen domain, got {run.test_acc}"

    client = MlflowClient(tracking_uri=uri)
    child = client.get_run(run.run_id)
    tags = child.data.tags
    for key, value in {
        "dgmeta.dataset": f"folder:{folder_dataset}", "dgmeta.target": "d2", "dgmeta.base": "erm",
        "dgmeta.meta": "none", "dgmeta.protocol": "dg", "dgmeta.seed": "0", "dgmeta.split": "random",
        "dgmeta.selection": "training_domain_validation", "dgmeta.backbone": "test_resnet",
    }.items():
        assert tags[key] == value, key
    assert len(tags["dgmeta.config_hash"]) == 16 and tags["dgmeta.git_commit"]
    assert tags["mlflow.parentRunId"] == result.parent_run_id
    assert child.data.metrics["test_acc"] == pytest.approx(run.test_acc)
    assert child.info.status == "FINISHED"
    history = client.get_metric_history(run.run_id, "train.loss")
    assert len(history) == 40 and history[-1].value < history[0].value
    assert {m.step for m in client.get_metric_history(run.run_id, "acc.d0.val")} == {10, 20, 30, 40}
    artifacts = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"config.json", "results.json", "model"} <= artifacts
    results = json.loads(open(client.download_artifacts(run.run_id, "results.json", str(tmp_path))).read())
    assert results["test_acc"] == pytest.approx(run.test_acc)
    # selection never looks at the target: the reported model is the SWAD average (--average swad),
    # built from source validation alone; the best live checkpoint is kept for comparison
    live = [c for c in results["checkpoints"] if c["weights"] == "live"]
    (averaged,) = [c for c in results["checkpoints"] if c["weights"] == "swad"]
    assert results["weights"] == "swad" and results["selected_step"] == 40
    assert results["test_acc"] == pytest.approx(averaged["test"]["d2"])
    best = max(live, key=lambda c: (c["val_mean"], -c["step"]))
    assert child.data.metrics["live_test_acc"] == pytest.approx(best["test"]["d2"])
    assert all(not c["test"] for c in live if c is not best)  # the target is evaluated once per model
    assert results["oracle_test_acc"] is None


def test_without_averaging_the_best_source_validation_checkpoint_is_reported(folder_dataset, tmp_path):
    config = RunConfig(
        dataset=f"folder:{folder_dataset}", base="erm", targets=["d2"], steps=40, seeds=[0], average="none",
        split="random", tracking_uri=f"sqlite:///{tmp_path / 'store.db'}", experiment="toy",
        hparams={"lr": 0.05, "optimizer": "sgd"}, test_every_eval=True, **TINY,
    )
    result = run_experiment(config)
    (run,) = result.runs
    client = MlflowClient(config.tracking_uri)
    results = json.loads(open(client.download_artifacts(run.run_id, "results.json", str(tmp_path))).read())
    best = max(results["checkpoints"], key=lambda c: (c["val_mean"], -c["step"]))
    assert results["selected_step"] == best["step"] and results["weights"] == "live"
    assert run.test_acc == pytest.approx(best["test"]["d2"]) and run.test_acc >= 0.85
    assert run.oracle_test_acc == pytest.approx(max(c["test"]["d2"] for c in results["checkpoints"]))
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"


def test_seeded_runs_repeat(folder_dataset, tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    accs = []
    for _ in range(2):
        config = RunConfig(dataset=f"folder:{folder_dataset}", base="erm", targets=["d1"], steps=6, seeds=[3],
                           split="random", tracking_uri=uri, **TINY)
        result = run_experiment(config)
        client = MlflowClient(tracking_uri=uri)
        accs.append([m.value for m in client.get_metric_history(result.runs[0].run_id, "train.loss")])
    assert accs[0] == pytest.approx(accs[1], rel=1e-5)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "nosuchset"], "unknown dataset"),
        (["run", "FOLDER", "--base", "nosuch"], "unknown --base 'nosuch'"),
        (["run", "FOLDER", "--target", "mars"], "mars"),
        (["run", "FOLDER", "--steps", "0"], "--steps must be a positive integer"),
        (["run", "FOLDER", "--backbone", "resnet_nope"], "unknown backbone"),
        (["run", "FOLDER", "--base", "erm", "--meta", "bogus"], "unknown --meta"),
        (["run", "FOLDER", "--set", "nosuch=1"], "unknown hyperparameter 'nosuch'"),
    ],
)
def test_bad_input_is_one_line(argv, expected, folder_dataset, tmp_path, capsys):
    argv = [a.replace("FOLDER", f"folder:{folder_dataset}") for a in argv]
    uri = f"sqlite:///{tmp_path / 'bad.db'}"
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--tracking-uri", uri, "--quiet"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    # a typo never leaves a run behind
    assert not (tmp_path / "bad.db").exists() or not MlflowClient(tracking_uri=uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=uri).search_experiments()]
    )


def test_iwdann_reports_the_class_ratios_of_the_model_it_selected(folder_dataset, tmp_path):
    """results.json carries what IWDAN estimated, from the selected checkpoint's state (one ratio update
    per 10 steps up to the selected step), keyed by class name; learners that estimate nothing add no key."""
    common = dict(
        dataset=f"folder:{folder_dataset}", targets=["d2"], steps=40, seeds=[0], average="none", split="random",
        tracking_uri=f"sqlite:///{tmp_path / 'store.db'}", experiment="toy", **TINY,
    )
    hparams = {"lr": 0.05, "optimizer": "sgd"}
    client = MlflowClient(common["tracking_uri"])
    results = {}
    for base, extra in (("iwdann", {"iw_update_every": 10}), ("erm", {})):
        (run,) = run_experiment(RunConfig(base=base, hparams={**hparams, **extra}, **common)).runs
        out = tmp_path / base
        out.mkdir()
        results[base] = json.loads(open(client.download_artifacts(run.run_id, "results.json", str(out))).read())
    report = results["iwdann"]["learner"]
    assert list(report["class_ratios"]) == ["a", "b"]
    assert report["class_ratio_updates"] == results["iwdann"]["selected_step"] // 10
    # every domain holds both classes equally: the estimated ratios stay near 1 (p_S . w = 1 per interval)
    assert all(0.5 < w < 1.5 for w in report["class_ratios"].values()), report
    assert "learner" not in results["erm"]
