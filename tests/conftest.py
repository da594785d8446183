import os
from pathlib import Path

import pytest

from dgmeta.process import tune_process

tune_process([])  # the test suite is an entry point: passive OpenMP waiting, before torch loads it

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DGMETA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Every test gets its own cache dir and MLflow store; nothing leaks into the repo."""
    monkeypatch.setenv("DGMETA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.delenv("DGMETA_DATA", raising=False)
    yield


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "PACS").is_dir():
        pytest.skip("../shared/data (full PACS) not present")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where there is a GPU (CI has none)."""
    if torch.cuda.is_available() or os.environ.get("DGMETA_CUDA_TEST_DEVICE") == "cpu":  # see tests/test_cuda.py
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
