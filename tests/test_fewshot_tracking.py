"""MODEL resolution (path, run id, registered model) and logging a report to MLflow."""

import csv

import numpy as np
import pytest
import torch

from dgmeta.errors import ConfigError
from dgmeta.evaluation.fewshot import log_fewshot, resolve_model, run_fewshot
from dgmeta.models.checkpoint import load_network, save_network
from dgmeta.models.network import create_network

META = {"backbone": "test_resnet", "num_classes": 3, "classes": ["a", "b", "c"], "image_size": 16,
        "dataset": "folder", "domains": ["d1", "d2"], "target": "d2", "meta_mode": "none"}


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path, monkeypatch):
    """The default experiment of a SQLite store keeps artifacts in ./mlruns: not in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def saved_network(tmp_path):
    torch.manual_seed(0)
    network = create_network("test_resnet", 3)
    return save_network(tmp_path / "out" / "network.pt", network, META), network


def test_resolve_a_path_and_a_folder(saved_network):
    path, _ = saved_network
    assert resolve_model(str(path)) == path
    assert resolve_model(str(path.parent)) == path
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model(str(path.parent / "nope.pt"))


def test_resolve_run_id_and_registered_model(saved_network):
    import mlflow
    from mlflow import MlflowClient

    path, network = saved_network
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(path), artifact_path="model")
    with mlflow.start_run() as empty_run:
        mlflow.log_param("nothing", 1)
    run_id = run.info.run_id

    resolved = resolve_model(run_id)
    assert resolved != path and resolved.name == "network.pt"
    loaded, meta = load_network(resolved)
    assert meta["backbone"] == "test_resnet"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), network.state_dict().values()))

    # registered the way dgmeta.tracking.model_registry does: source runs:/<id>/model
    client = MlflowClient()
    client.create_registered_model("pacs-erm")
    client.create_model_version("pacs-erm", source=f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("pacs-erm", "champion", "1")
    for spec in ("pacs-erm", "pacs-erm@champion", "models:/pacs-erm/1", "models:/pacs-erm@champion", "models:/pacs-erm/latest"):
        assert load_network(resolve_model(spec))[1]["target"] == "d2"

    errors = {
        "0" * 32: "no MLflow run",
        empty_run.info.run_id: "has no artifact model/network.pt",
        "no-such-model": "is not a file, an MLflow run id or a registered model",
        "pacs-erm@nope": "no registered model 'pacs-erm@nope'",
        "models:/pacs-erm/7": "no registered model 'pacs-erm version 7'",
        "models:/pacs-erm": "cannot read registered model URI",
    }
    for spec, message in errors.items():
        with pytest.raises(ConfigError) as info:
            resolve_model(spec)
        assert message in info.value.one_line() and "\n" not in info.value.one_line()


def test_log_fewshot_writes_metrics_and_episode_csv(tmp_path):
    import mlflow

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    features = torch.from_numpy(rng.normal(size=(3, 8))[labels] * 3 + rng.normal(size=(30, 8))).float()
    report = run_fewshot(None, {}, None, labels, ways="all", shots=[1, 2], queries=3, episodes=4,
                         methods=["prototype", "linear"], seed=0, features=features, progress=False)
    with pytest.raises(Exception, match="no active MLflow run"):
        log_fewshot(report)
    with mlflow.start_run() as run:
        logged = log_fewshot(report)
    data = mlflow.MlflowClient().get_run(run.info.run_id).data
    for method in ("prototype", "linear"):
        for shots in (1, 2):
            key = f"fewshot.{method}.{shots}shot"
            assert data.metrics[f"{key}.acc"] == pytest.approx(report.result(method, shots).accuracy)
            assert data.metrics[f"{key}.ci95"] == pytest.approx(report.result(method, shots).ci95)
    assert len(logged) == 8
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="fewshot_episodes.csv", dst_path=str(tmp_path))
    with open(local) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 4
    assert {"method", "shots", "episode", "accuracy", "seconds", "classes"} <= set(rows[0])
