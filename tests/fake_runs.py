"""MLflow fixtures for the orchestration/tracking tests: a fast per-test store and a fake trainer.

``fake_train`` honours the ``run_experiment`` contract (one parent run, one FINISHED child run
per (target, seed) with the real tags, metrics and a ``model/network.pt`` artifact) without
training anything, so compare/registry/retrain/sweep logic is tested on real MLflow runs in
milliseconds. Its accuracy is a fixed function of the config, so tests know what to expect:

    test_acc = 0.50 + 10 * lr + TARGET_BONUS[target] + 0.01 * seed     (lr default 0.01)

A target named ``broken``, or ``lr >= 0.5``, fails the run (status FAILED) with a TrainingError.
The result classes mirror ``dgmeta.runs.experiment``'s without importing torch, so spawned
sweep workers start fast.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dgmeta.errors import TrainingError
from dgmeta.learners.registry import learner_class
from dgmeta.runs.config import RunConfig

TARGET_BONUS = {"d0": 0.0, "d1": 0.05, "d2": 0.10, "photo": 0.2, "sketch": 0.0}
FINGERPRINT_ENV = "FAKE_DATA_VERSION"




@dataclass
class FakeRunResult:
    target: str
    seed: int
    run_id: str
    test_acc: float
    selected_step: int
    val_acc: float
    per_domain: dict
    model_path: Path | None = None


@dataclass
class FakeExperimentResult:
    parent_run_id: str
    config: RunConfig
    protocol: str
    runs: list = field(default_factory=list)

    def mean_test_acc(self) -> float:
        return sum(r.test_acc for r in self.runs) / len(self.runs)


def fake_accuracy(config: RunConfig, target: str, seed: int) -> float:
    lr = float(config.hparams.get("lr", 0.01))
    return min(1.0, 0.5 + 10 * lr + TARGET_BONUS.get(target, 0.0) + 0.01 * seed)


def fake_fingerprint(config: RunConfig) -> str:
    return f"fake-{config.dataset}-v{os.environ.get(FINGERPRINT_ENV, '1')}"


def fake_train(config: RunConfig):
    from dgmeta.tracking.mlflow_run import Tracking

    protocol = config.protocol or learner_class(config.base).default_protocol
    targets = config.targets or ["d0", "d1", "d2"]
    tracking = Tracking(config.tracking_uri, config.experiment)
    common = {
        "dgmeta.dataset": config.dataset, "dgmeta.base": config.base, "dgmeta.meta": config.meta,
        "dgmeta.protocol": protocol, "dgmeta.split": config.split, "dgmeta.selection": "training_domain_validation",
        "dgmeta.backbone": config.backbone, "dgmeta.git_commit": "fake", "dgmeta.data_fingerprint": fake_fingerprint(config),
    }
    parent = tracking.start_run(config.run_name or "fake", {**common, "dgmeta.role": "parent", "dgmeta.config_hash": config.config_hash(protocol=protocol)})
    result = FakeExperimentResult(parent.run_id, config, protocol)
    for target in targets:
        for seed in config.seeds:
            tags = {**common, "dgmeta.role": "child", "dgmeta.target": target, "dgmeta.seed": seed,
                    "dgmeta.config_hash": config.config_hash(protocol=protocol, target=target, seed=seed)}
            child = tracking.start_run(f"fake-{target}-s{seed}", tags, parent)
            if target == "broken" or float(config.hparams.get("lr", 0.01)) >= 0.5:
                child.finish("FAILED")
                parent.finish("FAILED")
                raise TrainingError(f"fake training diverged on {target} (lr {config.hparams.get('lr', 0.01)})", "lower the learning rate")
            acc = fake_accuracy(config, target, seed)
            child.log_params({**{k: v for k, v in config.to_dict().items() if k != "hparams"}, **{f"hp.{k}": v for k, v in config.hparams.items()}})
            child.log_metrics({"test_acc": acc, "val_acc": acc + 0.1, f"acc.{target}.test": acc}, step=config.steps)
            folder = Path(tempfile.mkdtemp(prefix="fake-net-"))
            (folder / "network.pt").write_bytes(b"fake network " + target.encode())
            child.log_artifact(folder / "network.pt", "model")
            child.finish("FINISHED")
            result.runs.append(FakeRunResult(target, seed, child.run_id, acc, config.steps, acc + 0.1, {target: acc}, folder / "network.pt"))
    parent.log_metrics({"test_acc": result.mean_test_acc()}, step=0)
    parent.finish("FINISHED")
    return result


_TEMPLATE: list[Path] = []  # test modules each import the fixture; the schema is still built once


@pytest.fixture(scope="session")
def _template_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite schema, created once: migrating a new database costs 2-6 s."""
    if not _TEMPLATE:
        from mlflow.tracking import MlflowClient

        path = tmp_path_factory.mktemp("mlflow-template") / "template.db"
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


@pytest.fixture
def store(tmp_path, _template_store) -> str:
    """This test's MLFLOW_TRACKING_URI (set by conftest to tmp_path/mlruns.db), schema ready."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    assert uri == f"sqlite:///{tmp_path / 'mlruns.db'}", "conftest's isolated store moved"
    shutil.copy(_template_store, tmp_path / "mlruns.db")
    return uri


def log_child(client, experiment_id: str, target: str, seed: int, test_acc: float | None, status: str = "FINISHED", **tags) -> str:
    """A child run logged directly, with the dgmeta tags compare groups by."""
    run_tags = {"dgmeta.role": "child", "dgmeta.target": target, "dgmeta.seed": str(seed), "dgmeta.dataset": "pacs",
                "dgmeta.base": "erm", "dgmeta.meta": "none", "dgmeta.protocol": "dg", "dgmeta.backbone": "test_resnet"}
    run_tags.update({f"dgmeta.{k}": str(v) for k, v in tags.items()})
    run = client.create_run(experiment_id, tags=run_tags)
    if test_acc is not None:
        client.log_metric(run.info.run_id, "test_acc", test_acc)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id
