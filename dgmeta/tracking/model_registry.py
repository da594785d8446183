"""The MLflow model registry: versions of a trained network, with the evidence they were judged on.

A version's source is ``runs:/<run_id>/model``: the MLflow model every run logs
(``dgmeta.tracking.mlflow_model``), so ``mlflow.pytorch.load_model("models:/NAME@champion")``,
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` take a version as it is, and the same
folder's ``network.pt`` serves dgmeta's own loader. Registering points at the run's artifact; it
never uploads the network again. Its tags say what it scored
and on what: ``test_acc`` (mean over the evaluated (target, seed) runs, a fraction),
``config_hash``, ``data_fingerprint``, ``protocol``, ``targets``, ``seeds`` and ``run_ids``.
Aliases ``champion`` (the version in use) and ``challenger`` (the latest candidate that did not
beat it) name versions.

An evaluation spans several child runs (targets x seeds) but a version needs one network: the
representative is the run with the best *source-validation* accuracy (``val_acc``), never the
best target accuracy, so choosing it does not peek at the test domains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from dgmeta.errors import TrackingError
from dgmeta.tracking.compare import RunRecord, load_runs_by_id

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
NETWORK_FILE = "network.pt"
REGISTERED_MODEL_DESCRIPTION = (
    "dgmeta image classifier. Input: uint8 RGB images, NCHW, at the run's test resolution (the version's signature); "
    "output: class probabilities (class names in the MLmodel metadata). "
    "Load with mlflow.pytorch.load_model / mlflow.pyfunc.load_model('models:/NAME@champion'), serve with "
    "`mlflow models serve -m models:/NAME@champion`; model/network.pt is the same network for dgmeta's own tools."
)


@dataclass
class Evaluation:
    """Test accuracies of one configuration over (target, seed) child runs."""

    runs: list[RunRecord]
    config_hash: str = ""
    parent_run_id: str | None = None
    recorded_test_acc: float = math.nan  # the version's test_acc tag, when its runs are gone
    scores: dict[tuple[str, str], float] = field(init=False)

    def __post_init__(self) -> None:
        self.scores = {(r.target, r.seed): r.test_acc for r in self.runs if r.test_acc is not None}

    @property
    def mean_test_acc(self) -> float:
        return sum(self.scores.values()) / len(self.scores) if self.scores else math.nan

    def tag(self, key: str) -> str:
        values = sorted({r.tags.get(f"dgmeta.{key}", "") for r in self.runs} - {""})
        return ",".join(values)

    @property
    def targets(self) -> list[str]:
        return sorted({t for t, _ in self.scores})

    @property
    def seeds(self) -> list[str]:
        return sorted({s for _, s in self.scores}, key=lambda s: (len(s), s))

    def representative(self) -> RunRecord:
        finished = [r for r in self.runs if r.test_acc is not None]
        if not finished:
            raise TrackingError("no finished run with test_acc to register", "train the pipeline first")
        return max(finished, key=lambda r: (r.metrics.get("val_acc", -math.inf), -r.start_time))

    def version_tags(self) -> dict[str, str]:
        return {
            "test_acc": f"{self.mean_test_acc:.6f}",
            "n_runs": str(len(self.scores)),
            "config_hash": self.config_hash,
            "data_fingerprint": self.tag("data_fingerprint"),
            "dataset": self.tag("dataset"),
            "protocol": self.tag("protocol"),
            "base": self.tag("base"),
            "meta": self.tag("meta"),
            "backbone": self.tag("backbone"),
            "targets": ",".join(self.targets),
            "seeds": ",".join(self.seeds),
            "run_ids": ",".join(sorted(r.run_id for r in self.runs if r.test_acc is not None)),
            "parent_run_id": self.parent_run_id or "",
        }


def client_for(tracking_uri: str | None = None):
    from mlflow.tracking import MlflowClient

    from dgmeta.tracking.mlflow_run import resolve_tracking_uri

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def evaluation_from_run_ids(run_ids: Sequence[str], parent_run_id: str | None = None, client=None) -> Evaluation:
    """The runs' evaluation; ``config_hash`` is the parent run's (children hash their target and seed too)."""
    client = client or client_for()
    runs = load_runs_by_id(run_ids, client=client)
    config_hash = ""
    if parent_run_id:
        config_hash = client.get_run(parent_run_id).data.tags.get("dgmeta.config_hash", "")
    return Evaluation(runs, config_hash=config_hash, parent_run_id=parent_run_id)


def _ensure_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION)
        except MlflowException as exc:  # a concurrent registration created it first
            if "already exists" not in str(exc).lower():
                raise


def register_run(run_id: str, model_name: str, tags: dict[str, str] | None = None, alias: str | None = None, client=None):
    """Register ``runs:/<run_id>/model`` as a new version; returns the ``ModelVersion``."""
    client = client or client_for()
    run = client.get_run(run_id)
    names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, MODEL_ARTIFACT)}
    if NETWORK_FILE not in names:
        raise TrackingError(f"run {run_id} has no {MODEL_ARTIFACT}/{NETWORK_FILE} artifact", "register a finished `dgmeta run` child run")
    version_tags = {
        "test_acc": str(run.data.metrics.get("test_acc", "")),
        "config_hash": run.data.tags.get("dgmeta.config_hash", ""),
        "data_fingerprint": run.data.tags.get("dgmeta.data_fingerprint", ""),
    }
    version_tags.update(tags or {})
    _ensure_model(client, model_name)
    version = client.create_model_version(
        model_name, source=f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id, tags={k: str(v) for k, v in version_tags.items()},
        description=_version_description(client, run_id) if "MLmodel" in names else None,
    )
    if alias:
        client.set_registered_model_alias(model_name, alias, version.version)
    return version


def _version_description(client, run_id: str) -> str | None:
    """What a client sends and gets back, from the run's MLmodel metadata (shown on the version's page)."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as folder:
        meta = yaml.safe_load(open(client.download_artifacts(run_id, f"{MODEL_ARTIFACT}/MLmodel", folder))).get("metadata") or {}
    if "image_size" not in meta:
        return None
    size, classes = meta["image_size"], meta.get("classes", [])
    return (
        f"Input: uint8 RGB images, NCHW, {size}x{size} pixels (values 0..255). "
        f"Output: probabilities of the {len(classes)} classes {', '.join(classes)} (in this order). "
        f"Trained on {meta.get('dataset', '?')} with target domain {meta.get('target', '?')} held out."
    )


def register_evaluation(evaluation: Evaluation, model_name: str, alias: str | None = None, extra_tags: dict[str, str] | None = None, client=None):
    tags = evaluation.version_tags()
    tags.update(extra_tags or {})
    return register_run(evaluation.representative().run_id, model_name, tags=tags, alias=alias, client=client)


def version_by_alias(model_name: str, alias: str, client=None):
    """The version an alias points to, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    client = client or client_for()
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def version_evaluation(version, client=None) -> Evaluation:
    """Re-read the runs a version was judged on (from its ``run_ids`` tag)."""
    client = client or client_for()
    run_ids = [r for r in version.tags.get("run_ids", "").split(",") if r] or [version.run_id]
    runs = load_runs_by_id(run_ids, client=client)
    return Evaluation(runs, config_hash=version.tags.get("config_hash", ""), parent_run_id=version.tags.get("parent_run_id") or None)


def move_alias(model_name: str, alias: str, version: str | int, client=None) -> None:
    client = client or client_for()
    client.set_registered_model_alias(model_name, alias, str(version))


def drop_alias(model_name: str, alias: str, client=None) -> None:
    from mlflow.exceptions import MlflowException

    client = client or client_for()
    try:
        client.delete_registered_model_alias(model_name, alias)
    except MlflowException:
        pass


def tag_version(model_name: str, version: str | int, tags: dict[str, str], client=None) -> None:
    client = client or client_for()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, str(value))
