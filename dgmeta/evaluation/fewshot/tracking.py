"""Logging a few-shot report to an MLflow run (given by id, or the active one)."""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from dgmeta.errors import TrackingError
from dgmeta.evaluation.fewshot.runner import FewShotReport

EPISODES_CSV = "fewshot_episodes.csv"


def metric_key(method: str, shots: int, stat: str, prefix: str = "fewshot") -> str:
    return f"{prefix}.{method}.{shots}shot.{stat}"


def write_episodes_csv(report: FewShotReport, path: str | Path) -> Path:
    path = Path(path)
    rows = report.episode_rows()
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["method", "shots", "episode", "accuracy", "seconds", "classes"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def log_fewshot(report: FewShotReport, run_id: str | None = None, client=None, prefix: str = "fewshot") -> dict[str, float]:
    """Metrics ``fewshot.<method>.<k>shot.acc`` / ``.ci95`` and the per-episode CSV; returns the metrics.

    Logs to ``run_id`` through ``client`` (an ``MlflowClient``; a default one when omitted), or
    without ``run_id`` to the active run of ``mlflow.start_run()``.
    """
    import mlflow
    from mlflow.entities import Metric

    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise TrackingError("no active MLflow run to log the few-shot report to", "call log_fewshot inside `with mlflow.start_run():` or pass run_id")
        run_id = active.info.run_id
    client = client or mlflow.MlflowClient()
    metrics: dict[str, float] = {}
    for r in report.results:
        metrics[metric_key(r.method, r.shots, "acc", prefix)] = r.accuracy
        metrics[metric_key(r.method, r.shots, "ci95", prefix)] = r.ci95
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(write_episodes_csv(report, Path(tmp) / EPISODES_CSV)))
    return metrics
