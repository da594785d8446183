"""Under `mlflow run` (MLFLOW_RUN_ID etc. in the environment) dgmeta's parent run is the run MLflow
Projects opened, in its experiment; a stale or foreign MLFLOW_RUN_ID is one error line. The
environment variables are set here as `mlflow run` sets them, around in-process runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from dgmeta.runs.config import RunConfig
from dgmeta.errors import TrackingError
from dgmeta.tracking.mlflow_run import Tracking
from tests.helpers import make_folder_dataset

REPO = Path(__file__).resolve().parents[1]


def _project_run(monkeypatch, uri: str, experiment: str = "projects"):
    """What `mlflow run` leaves for its command: a RUNNING run with the entry point's parameters."""
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name="bold-fox-42", tags={"mlflow.project.entryPoint": "run"})
    client.log_param(run.info.run_id, "config", "/somewhere/spec.yaml")
    client.log_param(run.info.run_id, "steps", "999")  # an entry-point parameter dgmeta also logs, with another value
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return client, experiment_id, run.info.run_id


def test_parent_run_is_the_project_run_in_its_experiment(tmp_path, monkeypatch):
    from dgmeta.runs.experiment import run_experiment

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client, experiment_id, project_id = _project_run(monkeypatch, uri)
    root = make_folder_dataset(tmp_path / "toy", per_class=6)
    config = RunConfig(
        dataset=f"folder:{root}", base="erm", targets=["d2"], steps=2, seeds=[0], split="random", experiment="elsewhere",
        backbone="test_resnet", weights="none", image_size=24, train_image_size=24, batch_size=4, eval_every=2, quiet=True,
    )
    first = run_experiment(config)
    assert first.parent_run_id == project_id
    project = client.get_run(project_id)
    assert project.info.status == "RUNNING"  # MLflow Projects ends it when the command exits
    assert project.data.tags["dgmeta.role"] == "parent" and project.data.tags["mlflow.runName"].startswith("folder:")
    assert project.data.params["config"] == "/somewhere/spec.yaml" and project.data.params["steps"] == "999"
    assert project.data.params["base"] == "erm" and project.data.metrics["test_acc"] == pytest.approx(first.mean_test_acc())
    (child,) = [client.get_run(r.run_id) for r in first.runs]
    assert child.info.experiment_id == experiment_id and child.data.tags["mlflow.parentRunId"] == project_id
    assert child.info.status == "FINISHED"
    assert client.get_experiment_by_name("elsewhere") is None  # --experiment yields to the project's
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    # a second top-level run of the same command (a sweep, a pipeline stage) nests under the project run
    second = run_experiment(config)
    nested = client.get_run(second.parent_run_id)
    assert second.parent_run_id != project_id and nested.data.tags["mlflow.parentRunId"] == project_id
    assert nested.info.experiment_id == experiment_id and nested.info.status == "FINISHED"


def test_project_run_that_fails_is_marked_failed(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client, _, project_id = _project_run(monkeypatch, uri)
    run = Tracking(None, "ignored").start_run("compare", {"dgmeta.role": "compare"})
    assert run.run_id == project_id
    run.log_params({"steps": 3, "against": "meta=none"})
    run.finish("FAILED")
    stored = client.get_run(project_id)
    assert stored.info.status == "FAILED" and stored.data.params["against"] == "meta=none" and stored.data.params["steps"] == "999"


def test_stale_or_foreign_run_id_is_one_error_line(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client, _, project_id = _project_run(monkeypatch, uri)
    client.set_terminated(project_id, "FINISHED")
    with pytest.raises(TrackingError, match=f"MLFLOW_RUN_ID={project_id} names a FINISHED run") as error:
        Tracking(None, "dgmeta")
    assert "unset MLFLOW_RUN_ID" in error.value.hint
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    with pytest.raises(TrackingError, match="names no run in the tracking store"):
        Tracking(None, "dgmeta")


def test_mlproject_states_its_environment():
    project = yaml.safe_load((REPO / "mlflow" / "MLproject").read_text())
    environment = yaml.safe_load((REPO / "mlflow" / project["python_env"]).read_text())
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(environment["dependencies"])
    constraints = {line for line in (REPO / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")}
    assert constraints <= set(environment["dependencies"])  # the versions CI tests
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split("=")[0].split(">")[0].split("<")[0] for d in environment["dependencies"]}
    assert {d.split("=")[0].split(">")[0].split("<")[0] for d in declared} <= names
    assert environment["python"] and "pip" in environment["build_dependencies"][0]
    for entry in project["entry_points"].values():
        assert "python -m dgmeta" in entry["command"]
