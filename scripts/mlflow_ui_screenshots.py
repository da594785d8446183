"""Screenshots of MLflow's UI showing a real dgmeta run: experiment page, run page, model version.

    python scripts/mlflow_ui_screenshots.py                         # -> benchmarks/results/ui/*.png
    python scripts/mlflow_ui_screenshots.py --out /tmp/ui --keep    # keep the store to browse it

Trains a tiny real run (pacs-mini, targets sketch and photo, 2 steps at 64 px) into a fresh
SQLite store, registers the sketch network as ``pacs-mini-ui@champion``, starts ``mlflow server`` on 127.0.0.1 (a free
port) and saves a PNG of each page with headless Chromium (Debian: ``apt-get install chromium``).
The server is always stopped, also on errors. PNGs are reduced to a 256-colour palette so each
stays well under 300 KB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the server helper the end-to-end tests use
from tests.local_server import free_port, local_server  # noqa: E402
EXPERIMENT = "pacs-mini-ui"
MODEL = "pacs-mini-ui"
STARTUP_TIMEOUT = 120  # seconds for `mlflow server` to answer /health on a busy machine


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("error: no Chromium found; install it (Debian: apt-get install chromium) or put it on PATH")


def train_and_register(home: Path, args) -> tuple[str, str, str]:
    """A tiny real `dgmeta run`; returns (experiment id, child run id, registered version)."""
    from mlflow.tracking import MlflowClient

    from dgmeta.runs.config import RunConfig
    from dgmeta.tracking.model_registry import register_run
    from dgmeta.runs.experiment import run_experiment

    uri = f"sqlite:///{home / 'mlflow.db'}"
    config = RunConfig(
        dataset="pacs-mini", base="erm", targets=args.targets.split(","), seeds=[0], steps=args.steps, image_size=args.image_size,
        eval_every=args.steps, batch_size=8, tracking_uri=uri, experiment=EXPERIMENT, quiet=True,
        backbone=args.backbone, weights=args.weights,
    )
    result = run_experiment(config)
    run = result.runs[0]
    client = MlflowClient(tracking_uri=uri)
    version = register_run(run.run_id, MODEL, alias="champion", client=client)
    return client.get_run(run.run_id).info.experiment_id, run.run_id, version.version


def registered(home: Path) -> tuple[str, str, str]:
    """(experiment id, run id, version) of the champion in a store this script made before."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    version = client.get_model_version_by_alias(MODEL, "champion")
    return client.get_run(version.run_id).info.experiment_id, version.run_id, version.version


def ui_mode(home: Path, experiment_id: str) -> str:
    """The mode MLflow's experiment list opens the experiment in, from its kind tag, as the UI
    (3.17) maps it; pages opened by URL alone get the mode last chosen in the browser instead,
    GenAI in a fresh one. The links the UI makes carry the mode on, as these URLs do."""
    from mlflow.tracking import MlflowClient

    from dgmeta.tracking.mlflow_run import EXPERIMENT_KIND_TAG

    kind = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG)
    classic = {"custom_model_development", "custom_model_development_inferred", "finetuning", "regression", "classification", "forecasting", "automl"}
    return "machine_learning" if kind in classic else "genai"


@contextmanager
def mlflow_server(home: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with local_server(command, f"{url}/health", home / "server.log", STARTUP_TIMEOUT, cwd=home):
        yield url


def screenshot(chromium: str, url: str, png: Path, width: int, height: int, wait_ms: int) -> None:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", url],
            check=True, capture_output=True, timeout=180,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    shrink(png)


def shrink(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(png, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ui")
    parser.add_argument("--keep", action="store_true", help="keep the store (its folder is printed)")
    parser.add_argument("--reuse", type=Path, help="a folder kept by --keep: screenshot its store again, no training")
    parser.add_argument("--targets", default="sketch,photo", help="comma-separated; the first one's network is registered")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--width", type=int, default=1800)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time the page gets to load and render")
    args = parser.parse_args(argv)

    chromium = find_chromium()
    home = args.reuse or Path(tempfile.mkdtemp(prefix="dgmeta-mlflow-ui-"))
    os.environ["DGMETA_CACHE"] = str(home / "cache")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        experiment_id, run_id, version = registered(home) if args.reuse else train_and_register(home, args)
        with mlflow_server(home) as url:
            mode = f"?workflowType={ui_mode(home, experiment_id)}"
            pages = {
                # sorted by test_acc, the runs list flat (parent and child side by side)
                "experiment.png": f"{url}/#/experiments/{experiment_id}/runs{mode}&orderByKey=metrics.%60test_acc%60&orderByAsc=false",
                "experiment_charts.png": f"{url}/#/experiments/{experiment_id}/runs{mode}&compareRunsMode=CHART",
                "run.png": f"{url}/#/experiments/{experiment_id}/runs/{run_id}{mode}",
                "model_version.png": f"{url}/#/models/{MODEL}/versions/{version}{mode}",
            }
            for name, page in pages.items():
                wait = args.wait_ms * (3 if "CHART" in page else 1)  # the chart view loads plotly lazily
                screenshot(chromium, page, args.out / name, args.width, args.height, wait)
                print(f"{args.out / name}: {page} ({(args.out / name).stat().st_size // 1024} KB)")
    finally:
        if args.reuse:
            pass
        elif args.keep:
            print(f"store kept: {home} (mlflow server --backend-store-uri sqlite:///{home / 'mlflow.db'})")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
