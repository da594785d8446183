"""Run `python -m dgmeta run ...` as a child process and measure it from outside (shared by benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class MeasuredRun:
    peak_rss_gib: float  # the child's own peak resident set size (os.wait4, not other children)
    wall_seconds: float
    metrics: dict[str, float]  # the MLflow child run's final metrics
    params: dict[str, str]


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_dgmeta(run_args: list[str], work: Path, env: dict | None = None) -> MeasuredRun:
    """``dgmeta run RUN_ARGS --tracking-uri sqlite:///WORK/mlruns.db``; raises if the run fails."""
    db = Path(work) / f"mlruns-{time.time_ns()}.db"
    command = [sys.executable, "-m", "dgmeta", "run", *run_args, "--tracking-uri", f"sqlite:///{db}"]
    started = time.time()
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed with exit code {proc.returncode}")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`dgmeta.role` = 'child'")
    return MeasuredRun(usage.ru_maxrss / (1 << 20), wall, dict(runs[0].data.metrics), dict(runs[0].data.params))
