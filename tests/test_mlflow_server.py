"""End to end against a real `mlflow server` on localhost: a tiny real pipeline is retrained
through `--tracking-uri http://127.0.0.1:PORT`, registered, compared, skipped when nothing
changed, and the MLproject's compare entry point runs against the same server."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dgmeta.cli.main import main
from tests.fake_runs import _template_store  # noqa: F401 (fixture)
from tests.local_server import free_port, local_server

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "pacs_mini_smoke.yaml"
STARTUP_TIMEOUT = 120  # seconds; the server imports FastAPI + MLflow, slow on a busy machine


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, _template_store):
    home = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(_template_store, home / "mlflow.db")  # schema ready: no migrations at startup
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
               "--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with local_server(command, f"{url}/health", home / "server.log", STARTUP_TIMEOUT, cwd=home):
        yield url


@pytest.mark.slow
def test_real_pipeline_through_the_server(mlflow_server, tmp_path, capsys, monkeypatch):
    from dgmeta.models.checkpoint import load_network

    url = mlflow_server
    monkeypatch.chdir(tmp_path)  # nothing may land in the repository
    main(["retrain", str(SMOKE), "--tracking-uri", url, "--quiet"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == "promoted: no champion yet (pacs-mini-smoke v1)"

    client = MlflowClient(tracking_uri=url)
    champion = client.get_model_version_by_alias("pacs-mini-smoke", "champion")
    (run_id,) = champion.tags["run_ids"].split(",")
    child = client.get_run(run_id)
    assert child.info.status == "FINISHED" and child.data.tags["dgmeta.target"] == "sketch"
    assert child.data.tags["dgmeta.data_fingerprint"] == champion.tags["data_fingerprint"]
    assert float(champion.tags["test_acc"]) == pytest.approx(child.data.metrics["test_acc"], abs=1e-6)
    assert any(key.startswith("fewshot.prototype") for key in child.data.metrics)  # the spec's fewshot stage ran
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/domain_accuracy.png", "plots/training_curves.png"} <= plots
    assert client.get_experiment(child.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")

    import mlflow

    mlflow.set_tracking_uri(url)
    folder = mlflow.artifacts.download_artifacts(artifact_uri="models:/pacs-mini-smoke@champion", dst_path=str(tmp_path / "model"))
    network, meta = load_network(Path(folder) / "network.pt")
    assert meta["target"] == "sketch" and meta["backbone"] == "test_resnet"

    main(["compare", "--experiment", "pacs-mini-smoke", "--tracking-uri", url, "--format", "csv"])
    (row,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))[:1]
    assert row["target"] == "sketch" and float(row["mean"]) == pytest.approx(100 * child.data.metrics["test_acc"], abs=1e-4)

    # nothing changed: the real data fingerprint and config hash match the champion's
    main(["retrain", str(SMOKE), "--tracking-uri", url, "--quiet"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("skipped: data fingerprint and config hash unchanged since champion v1")

    # the MLproject's compare entry point, run by MLflow Projects against the same server
    report = tmp_path / "report.html"
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO / "mlflow"), "-e", "compare", "--env-manager", "local",
         "-P", "experiment=pacs-mini-smoke", "-P", f"output={report}", "--experiment-name", "projects"],
        # the entry point's command is a plain `python -m dgmeta ...`: this interpreter must be first on PATH
        env={**os.environ, "MLFLOW_TRACKING_URI": url, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert report.read_text().startswith("<!DOCTYPE html>")
    # the run MLflow Projects opened is the compare run, in the project's experiment
    projects = client.get_experiment_by_name("projects").experiment_id
    (compare_run,) = client.search_runs([projects], "tags.`dgmeta.role` = 'compare'")
    assert compare_run.data.tags["mlflow.project.entryPoint"] == "compare" and compare_run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(compare_run.info.run_id, "compare")} >= {"compare/report.html"}


def test_start_script_runs_the_documented_server_command(tmp_path):
    script = REPO / "mlflow" / "start_server.sh"
    assert os.access(script, os.X_OK)
    env = {**os.environ, "MLFLOW_BIN": "echo", "MLFLOW_HOME": str(tmp_path / "srv"), "MLFLOW_PORT": "5123"}
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    command = result.stdout.strip().splitlines()[-1]
    home = (tmp_path / "srv").resolve()
    assert command == (
        f"server --backend-store-uri sqlite:///{home}/mlflow.db --artifacts-destination {home}/artifacts "
        "--host 127.0.0.1 --port 5123 --workers 2"
    )
    assert (home / "artifacts").is_dir()
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5123" in result.stdout
