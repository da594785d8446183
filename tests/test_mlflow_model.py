"""A trained network is an MLflow model: plain MLflow loads a registered version (pytorch and
pyfunc flavors) and `mlflow models serve` answers a request with the class probabilities the
network computes in process. The run's record reads as a DG experiment in MLflow's UI: classic-ML
experiment kind, the dataset as an input, parameters without noise, one summary point per metric."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from dgmeta.runs.config import RunConfig
from dgmeta.tracking.mlflow_model import ImageClassifier, log_network_model
from dgmeta.tracking.model_registry import register_run
from tests.helpers import make_folder_dataset
from tests.local_server import free_port, local_server

SERVE_TIMEOUT = 180  # seconds until /ping answers; the server imports MLflow and torch on a busy machine
MODEL = "toy-dg"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny real run, registered as MODEL@champion; yields (uri, run id, target images)."""
    from dgmeta.data import create_dataset
    from dgmeta.data.images import load_images
    from dgmeta.runs.experiment import run_experiment

    home = tmp_path_factory.mktemp("mlflow-model")
    root = make_folder_dataset(home / "toy", per_class=8)
    uri = f"sqlite:///{home / 'mlruns.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGMETA_CACHE", str(home / "cache"))
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        config = RunConfig(
            dataset=f"folder:{root}", base="erm", targets=["d2"], steps=4, seeds=[0], split="random", tracking_uri=uri,
            experiment="toy", backbone="test_resnet", weights="none", image_size=24, train_image_size=24, batch_size=4,
            eval_every=2, quiet=True,
        )
        (run,) = run_experiment(config).runs
        client = MlflowClient(tracking_uri=uri)
        register_run(run.run_id, MODEL, alias="champion", client=client)
        dataset = create_dataset(f"folder:{root}", split="random")
        images = np.array(load_images(dataset.samples("d2", "test"), 24, cache_dir=home / "cache", progress=False))
        yield uri, run.run_id, images, home


def test_run_record_reads_as_a_dg_experiment(trained, tmp_path):
    from dgmeta.data import create_dataset

    uri, run_id, _, home = trained
    client = MlflowClient(tracking_uri=uri)
    child = client.get_run(run_id)
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert client.get_experiment(child.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    fingerprint = create_dataset(f"folder:{home / 'toy'}", split="random").fingerprint()
    assert child.data.tags["dgmeta.data_fingerprint"] == fingerprint
    for run, extra in ((child, {"dgmeta.target": "d2"}), (parent, {})):
        (logged,) = run.inputs.dataset_inputs
        assert logged.dataset.name == "toy" and fingerprint.startswith(logged.dataset.digest) and len(logged.dataset.digest) == 12
        assert json.loads(logged.dataset.source) == {"uri": (home / "toy").resolve().as_uri()}
        assert json.loads(logged.dataset.profile)["domains"] == ["d0", "d1", "d2"]
        tags = {t.key: t.value for t in logged.tags}
        assert tags == {"mlflow.data.context": "training", "dgmeta.split": "random", "dgmeta.data_fingerprint": fingerprint, **extra}

    for run in (child, parent):
        params = run.data.params
        assert {"data_root", "cache_dir", "quiet", "resume", "run_name", "tracking_uri", "experiment", "hp.warm_start"}.isdisjoint(params)
        assert "None" not in params.values() and params["steps"] == "4" and params["split"] == "random"

    # one summary point for val_acc (the selected checkpoint's); the per-evaluation curve is acc.mean.val
    (point,) = client.get_metric_history(run_id, "val_acc")
    curve = client.get_metric_history(run_id, "acc.mean.val")
    assert [m.step for m in curve] == [2, 4] and point.step == 4
    results = json.loads(Path(client.download_artifacts(run_id, "results.json", str(tmp_path))).read_text())
    selected = next(c for c in results["checkpoints"] if c["step"] == results["selected_step"])
    assert point.value == pytest.approx(selected["val_mean"])
    assert point.value == pytest.approx(next(m.value for m in curve if m.step == results["selected_step"]))
    for key, history in ((k, client.get_metric_history(run_id, k)) for k in child.data.metrics):
        assert len({m.step for m in history}) == len(history), f"{key} has two points at one step"


def test_experiment_kind_is_set_once_and_a_chosen_kind_kept(tmp_path):
    from dgmeta.tracking.mlflow_run import Tracking

    uri = f"sqlite:///{tmp_path / 'kinds.db'}"
    client = MlflowClient(tracking_uri=uri)
    older = client.create_experiment("older")  # made before dgmeta set the kind
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "finetuning"})
    for name in ("older", "chosen", "new"):
        Tracking(uri, name)
    kinds = {e.name: e.tags.get("mlflow.experimentKind") for e in client.search_experiments()}
    assert kinds == {"older": "custom_model_development", "chosen": "finetuning", "new": "custom_model_development", "Default": None}
    assert older and chosen


def _dgmeta_probabilities(uri: str, run_id: str, images: np.ndarray, folder: Path) -> np.ndarray:
    from dgmeta.models.checkpoint import load_network

    client = MlflowClient(tracking_uri=uri)
    network, meta = load_network(client.download_artifacts(run_id, "model/network.pt", str(folder)))
    with torch.no_grad():
        return torch.softmax(network.eval()(torch.from_numpy(images).float() / 255), dim=1).numpy()


def test_run_logs_one_mlflow_model_holding_network_pt(trained, monkeypatch):
    uri, run_id, _, home = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    names = {a.path for a in client.list_artifacts(run_id, "model")}
    assert {"model/MLmodel", "model/network.pt", "model/data", "model/requirements.txt"} <= names
    assert [a.path for a in client.list_artifacts(run_id) if a.path.endswith(".pt2")] == []  # logged once, under model/
    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    assert set(info.flavors) == {"pytorch", "python_function"}
    (spec,) = info.signature.inputs.inputs
    assert spec.type == np.dtype(np.uint8) and spec.shape == (-1, 3, 24, 24)
    assert info.signature.outputs.inputs[0].shape == (-1, 2)
    assert info.metadata["classes"] == ["a", "b"] and info.metadata["target"] == "d2"
    description = client.get_model_version_by_alias(MODEL, "champion").description
    assert description.startswith("Input: uint8 RGB images, NCHW, 24x24 pixels") and "2 classes a, b" in description
    example = json.loads(Path(client.download_artifacts(run_id, "model/serving_input_example.json", str(home))).read_text())
    assert np.asarray(example["inputs"]).shape == (1, 3, 24, 24)


def test_registered_version_loads_with_plain_mlflow(trained, monkeypatch, tmp_path):
    uri, run_id, images, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    expected = _dgmeta_probabilities(uri, run_id, images, tmp_path)

    module = mlflow.pytorch.load_model(f"models:/{MODEL}@champion")
    with torch.no_grad():
        probabilities = module(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)

    from dgmeta.evaluation.accuracy import predict_array
    from dgmeta.models.checkpoint import load_network

    network, _ = load_network(MlflowClient(tracking_uri=uri).download_artifacts(run_id, "model/network.pt", str(tmp_path / "n")))
    dgmeta_classes, _ = predict_array(network, images)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion", model_config={"device": "cpu"})
    assert (pyfunc.predict(images).argmax(1) == dgmeta_classes).all()
    with pytest.raises(mlflow.exceptions.MlflowException, match="shape"):  # the signature guards the resolution
        pyfunc.predict(np.zeros((1, 3, 32, 32), dtype=np.uint8))
    with pytest.raises(mlflow.exceptions.MlflowException, match="schema"):  # and the pixel type
        pyfunc.predict(images[:1] / 255)


def test_model_loads_without_dgmeta_or_timm(trained, tmp_path):
    uri, run_id, images, _ = trained
    folder = MlflowClient(tracking_uri=uri).download_artifacts(run_id, "model", str(tmp_path))
    np.save(tmp_path / "x.npy", images[:2])
    code = (
        "import sys; sys.modules['dgmeta'] = sys.modules['timm'] = None\n"  # any import of either fails
        "import mlflow.pyfunc, numpy as np\n"
        f"np.save('p.npy', mlflow.pyfunc.load_model({folder!r}).predict(np.load('x.npy')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), _dgmeta_probabilities(uri, run_id, images[:2], tmp_path / "d"), atol=1e-5)


def test_in_process_module_takes_uint8_or_float_images():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    module = ImageClassifier(network, 8).eval()
    pixels = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(module(pixels), module(pixels.float() / 255))
    with pytest.raises(ValueError, match=r"\[N, 3, 8, 8\]"):
        module(torch.zeros(1, 3, 16, 16))


def test_export_failure_keeps_network_pt_and_says_why(tmp_path, monkeypatch, capsys):
    from dgmeta.tracking import mlflow_model
    from dgmeta.tracking.mlflow_run import Tracking

    network_file = tmp_path / "network.pt"
    network_file.write_bytes(b"weights")
    tracking = Tracking(f"sqlite:///{tmp_path / 'store.db'}", "broken-export")
    run = tracking.start_run("r", {})

    def refuse(*args, **kwargs):
        raise RuntimeError("torch.export cannot trace this backbone\nlong trace")

    monkeypatch.setattr(mlflow_model, "save_mlflow_model", refuse)
    assert log_network_model(run, network_file, torch.nn.Linear(1, 1), {"image_size": 8}) == network_file
    stored = tracking.client.get_run(run.run_id)
    assert stored.data.tags["dgmeta.mlflow_model_error"] == "RuntimeError: torch.export cannot trace this backbone"
    assert [a.path for a in tracking.client.list_artifacts(run.run_id, "model")] == ["model/network.pt"]
    assert "no MLflow model" in capsys.readouterr().err


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_class_probabilities(trained, tmp_path):
    uri, run_id, images, _ = trained
    expected = _dgmeta_probabilities(uri, run_id, images[:3], tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"}
    with local_server(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", SERVE_TIMEOUT, cwd=tmp_path, env=env):
        answer = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": images[:3].tolist()})
        probabilities = np.asarray(answer["predictions"], dtype=np.float32)
        assert probabilities.shape == (3, 2)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        with pytest.raises(urllib.error.HTTPError) as refused:  # the signature guards the resolution
            _post(f"http://127.0.0.1:{port}/invocations", {"inputs": np.zeros((1, 3, 32, 32), dtype=np.uint8).tolist()})
        assert refused.value.code == 400
