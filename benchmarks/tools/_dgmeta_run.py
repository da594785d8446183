"""Run `python -m dgmeta run ...` as a child process and measure it from outside (shared by benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class MeasuredRun:
    peak_rss_gib: float  # the child's own peak resident set size (os.wait4, not other children)
    wall_seconds: float
    metrics: dict[str, float]  # the MLflow child run's final metrics
    params: dict[str, str]
    #: peaks of /proc/PID/status RssAnon (heap, tensors) and RssFile (mapped files: the decoded-image
    #: cache, libraries; reclaimable) sampled every 0.1 s, in GiB; they need not peak together
    peak_rss_anon_gib: float = float("nan")
    peak_rss_file_gib: float = float("nan")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_dgmeta(run_args: list[str], work: Path, env: dict | None = None) -> MeasuredRun:
    """``dgmeta run RUN_ARGS --tracking-uri sqlite:///WORK/mlruns.db``; raises if the run fails."""
    db = Path(work) / f"mlruns-{time.time_ns()}.db"
    command = [sys.executable, "-m", "dgmeta", "run", *run_args, "--tracking-uri", f"sqlite:///{db}"]
    started = time.time()
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})})
    peaks = {"RssAnon": 0, "RssFile": 0}
    sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peaks), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed with exit code {proc.returncode}")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`dgmeta.role` = 'child'")
    return MeasuredRun(
        usage.ru_maxrss / (1 << 20), wall, dict(runs[0].data.metrics), dict(runs[0].data.params),
        peaks["RssAnon"] / (1 << 20), peaks["RssFile"] / (1 << 20),
    )


def _sample_rss(pid: int, peaks: dict[str, int]) -> None:
    """Track the largest RssAnon / RssFile (KiB) of ``pid`` until it exits."""
    path = f"/proc/{pid}/status"
    while True:
        try:
            with open(path) as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except (FileNotFoundError, ProcessLookupError):
            return
        if fields.get("State", "").strip().startswith("Z"):  # exited, waiting to be reaped
            return
        for key in peaks:
            if key in fields:
                peaks[key] = max(peaks[key], int(fields[key].split()[0]))
        time.sleep(0.1)
