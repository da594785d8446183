"""MLflow runs of `dgmeta run`: a parent per command, a child per (target, seed).

Uses ``MlflowClient`` explicitly (no global fluent state), so several runs can be written
from one process and every call says which run it writes to. Metrics are buffered and sent
in batches: per-step ``log_metric`` calls would cost more than a training step on a small model.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from dgmeta.errors import TrackingError

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
PARENT_RUN_ID_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
ROLE_TAG = "dgmeta.role"
#: set by `mlflow run` for the command of an MLproject entry point: the run it opened for it
PROJECT_RUN_ENV = "MLFLOW_RUN_ID"
#: MLflow 3's UI opens an experiment without this tag in its GenAI mode (traces, evaluation);
#: "custom_model_development" is its classic-ML kind (runs, metrics, models)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: options that say how a command runs, not what it computes: the run already records them
#: (its experiment, name and store) or they change nothing in the result (quiet, resume)
OPERATIONAL_PARAMS = frozenset({"quiet", "resume", "run_name", "tracking_uri", "experiment"})
#: MLflow keeps a dataset digest of at most 36 characters; the full fingerprint is an input tag
DIGEST_LENGTH = 12
#: tracking URI schemes MLflow stores understand (a driver may follow a "+", as in postgresql+psycopg2)
KNOWN_SCHEMES = {"sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc"}


#: tables every MLflow SQLite store has (its schema migrations and its experiments)
_MLFLOW_TABLES = {"alembic_version", "experiments"}


def _refuse_foreign_database(db: Path) -> None:
    """MLflow would add its ~70 tables to any SQLite file silently: refuse one that holds tables
    and is not an MLflow store. Files that are not SQLite at all are left to MLflow's own error."""
    import sqlite3

    # read under the store's setup lock (shared): a run creating MLflow's tables right now holds it
    # exclusively, and a half-created store would look like another application's
    with _folder_lock(db.parent, exclusive=False):
        if not db.is_file() or db.stat().st_size == 0:
            return
        try:
            connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        except sqlite3.Error:
            return
        try:
            tables = sorted(row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        except sqlite3.Error:
            return
        finally:
            connection.close()
    if tables and not _MLFLOW_TABLES <= set(tables):
        shown = ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
        raise TrackingError(
            f"tracking store {db} is a SQLite database of another application (tables: {shown}), not an MLflow store",
            "pass another --tracking-uri, e.g. a new file next to it (MLflow creates its tables in an empty one)",
        )


def resolve_tracking_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a local SQLite store in the CWD."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        folder = db.parent if str(db.parent) else Path(".")
        if not folder.exists():
            raise TrackingError(f"tracking store folder {folder} does not exist", "create it or pass another --tracking-uri")
        if db.is_dir():  # MLflow would retry opening it for minutes
            raise TrackingError(f"tracking store {db} is a folder, not a SQLite file", f"pass e.g. --tracking-uri sqlite:///{db / 'mlruns.db'}")
        if not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(f"tracking store {db} is not writable", "fix its permissions or pass another --tracking-uri")
        _refuse_foreign_database(db)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif "://" in uri and uri.split("://", 1)[0].split("+", 1)[0].lower() not in KNOWN_SCHEMES:
        raise TrackingError(
            f"unsupported tracking URI scheme {uri.split('://', 1)[0]!r} in {uri}",
            "use sqlite:///PATH/mlruns.db, a folder path, or http://HOST:PORT of an MLflow server",
        )
    elif uri.startswith("file:") or "://" not in uri:
        path = Path(uri[len("file:") :] if uri.startswith("file:") else uri)
        target = path if path.exists() else path.parent
        if target.exists() and not os.access(target, os.W_OK):
            raise TrackingError(f"tracking directory {path} is not writable", "fix its permissions or pass another --tracking-uri")
    return uri


def _check_server(uri: str) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
            if response.status >= 400:
                raise OSError(response.status)
    except (OSError, urllib.error.URLError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({getattr(exc, 'reason', exc)})",
            "start it (see mlflow/README.md) or pass another --tracking-uri",
        ) from None


@contextmanager
def _store_setup_lock(uri: str) -> Iterator[None]:
    """Serialise opening a SQLite store across processes: two runs starting at once would both
    create its tables (alembic migrations) and the experiment, and one of them would fail.
    The lock is on the store's folder itself, so no lock file is left beside the store."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with _folder_lock(Path(uri[len("sqlite:///") :]).parent, exclusive=True):
        yield


@contextmanager
def _folder_lock(folder: Path, exclusive: bool) -> Iterator[None]:
    """``flock`` on a folder (released when its descriptor closes, also if the process dies)."""
    import fcntl

    descriptor = os.open(folder if str(folder) else ".", os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(descriptor)


def artifact_root_for(uri: str) -> str | None:
    """Where new experiments keep artifacts: beside a SQLite store, else the server's default."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = out.stdout.strip()
        if out.returncode == 0 and commit:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


class Tracking:
    """One tracking store and experiment.

    Under ``mlflow run`` (``MLFLOW_RUN_ID`` set to the run MLflow Projects opened for the entry
    point) the experiment is that run's, whatever ``experiment`` says, and the first top-level
    run a process starts *is* the project run (its name and tags become dgmeta's); any further
    top-level runs of the process nest under it. MLflow Projects ends the project run itself
    when the command exits, so a successful dgmeta run leaves its status alone.
    """

    def __init__(self, tracking_uri: str | None, experiment: str):
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(tracking_uri)
        self.project_run_id: str | None = None
        try:
            with _store_setup_lock(self.uri):
                self.client = MlflowClient(tracking_uri=self.uri)
                project_run = self._project_run()
                found = (
                    self.client.get_experiment(project_run.info.experiment_id)
                    if project_run is not None
                    else self.client.get_experiment_by_name(experiment)
                )
                if found is None:
                    self.experiment_id = self.client.create_experiment(
                        experiment, artifact_location=artifact_root_for(self.uri), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                    )
                else:
                    if found.lifecycle_stage == "deleted":
                        self.client.restore_experiment(found.experiment_id)
                    self.experiment_id = found.experiment_id
                    if EXPERIMENT_KIND_TAG not in found.tags:  # a kind someone chose in the UI is kept
                        self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(
                f"cannot open MLflow store {self.uri} ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
                "check --tracking-uri / MLFLOW_TRACKING_URI",
            ) from None

    def _project_run(self):
        """The run ``mlflow run`` opened for this process (``MLFLOW_RUN_ID``), or None."""
        from mlflow.exceptions import MlflowException

        run_id = os.environ.get(PROJECT_RUN_ENV, "").strip()
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise TrackingError(
                f"{PROJECT_RUN_ENV}={run_id} names no run in the tracking store {self.uri}",
                f"unset {PROJECT_RUN_ENV} (it is for commands started by `mlflow run`), or use the store that run is in",
            ) from None
        if run.info.status != "RUNNING":
            raise TrackingError(
                f"{PROJECT_RUN_ENV}={run_id} names a {run.info.status} run: a leftover of an earlier `mlflow run`?",
                f"unset {PROJECT_RUN_ENV}; `mlflow run` sets it for the commands it starts",
            )
        self.project_run_id = run_id
        return run

    def start_run(self, name: str, tags: dict[str, str], parent: "RunLogger | None" = None) -> "RunLogger":
        tags = {k: str(v) for k, v in tags.items()}
        if parent is None and self.project_run_id is not None:
            project = self.client.get_run(self.project_run_id)
            if ROLE_TAG not in project.data.tags:  # not yet taken by an earlier run of this command
                from mlflow.entities import RunTag

                self.client.log_batch(self.project_run_id, tags=[RunTag(k, v) for k, v in {**tags, RUN_NAME_TAG: name}.items()])
                return RunLogger(self.client, self.project_run_id, project_run=True, logged_params=dict(project.data.params))
            parent_id = self.project_run_id
        else:
            parent_id = parent.run_id if parent is not None else None
        if parent_id is not None:
            tags[PARENT_RUN_ID_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return RunLogger(self.client, run.info.run_id)


class RunLogger:
    def __init__(self, client, run_id: str, flush_every: int = 200, project_run: bool = False, logged_params: dict | None = None):
        self.client = client
        self.run_id = run_id
        self._metrics: list = []
        self.flush_every = flush_every
        self.finished = False
        #: the run of `mlflow run` (see Tracking): MLflow Projects ends it, and its entry-point
        #: parameters stay as logged (MLflow refuses to change a param's value)
        self.project_run = project_run
        self._project_params = set(logged_params or ())

    def log_params(self, params: dict[str, Any]) -> None:
        """Logs ``params`` less the noise: unset options (None, "") and :data:`OPERATIONAL_PARAMS`."""
        from mlflow.entities import Param

        items = [
            Param(k, str(v)[:6000])
            for k, v in params.items()
            if v is not None and v != "" and k not in OPERATIONAL_PARAMS and k not in self._project_params
        ]
        for start in range(0, len(items), 90):
            self.client.log_batch(self.run_id, params=items[start : start + 90])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self._metrics) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        while self._metrics:
            chunk, self._metrics = self._metrics[:900], self._metrics[900:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        if self.finished:
            return
        try:
            self.flush()
        finally:
            if not (self.project_run and status == "FINISHED"):  # MLflow Projects finishes its run when the command exits
                self.client.set_terminated(self.run_id, status)
            self.finished = True


def training_curves(run) -> Callable[[dict[str, float], int], None]:
    """The trainer's ``on_metrics`` for ``run``. The mean source validation accuracy of each
    evaluation is charted as ``acc.mean.val`` beside ``acc.<domain>.val``: ``val_acc`` is the
    selected checkpoint's, logged once when the run ends, so it gets no second point there."""

    def log(metrics: dict[str, float], step: int) -> None:
        run.log_metrics({("acc.mean.val" if key == "val_acc" else key): value for key, value in metrics.items()}, step)

    return log


def log_dataset_input(run, dataset, context: str = "training", **tags: Any) -> None:
    """``dataset`` (a ``DomainDataset``) as the run's MLflow input: name, digest (the start of its
    fingerprint), where it lies, its domains and classes; the split kind and ``tags`` as input tags.
    Runs of other ranks than 0 (no MLflow client) log nothing."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    if not isinstance(run, RunLogger):
        return
    fingerprint = dataset.fingerprint()
    entity = Dataset(
        name=Path(dataset.name.split(":", 1)[-1]).name,  # folder:/data/office is shown as "office", its path as the source
        digest=fingerprint[:DIGEST_LENGTH],
        source_type="local",
        source=json.dumps({"uri": Path(dataset.root).resolve().as_uri()}),
        profile=json.dumps({"domains": list(dataset.domains), "classes": len(dataset.classes)}),
    )
    input_tags = {"mlflow.data.context": context, "dgmeta.split": dataset.split_kind, "dgmeta.data_fingerprint": fingerprint}
    input_tags.update({f"dgmeta.{k}": str(v) for k, v in tags.items()})
    run.client.log_inputs(run.run_id, datasets=[DatasetInput(entity, tags=[InputTag(k, v) for k, v in input_tags.items()])])
