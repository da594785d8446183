"""Finished grid runs as models: the rows of ``recipe_grid.py`` JSONL files name MLflow runs whose
``model/network.pt`` can be scored again (label_shift.py, test_time_augmentation.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def add_saved_run_arguments(parser, default_data_root: str) -> None:
    """The options every saved-run script takes: result rows, where the models are, the data, the output."""
    parser.add_argument("--rows", nargs="+", required=True, help="recipe_grid.py JSONL files")
    parser.add_argument("--artifacts", required=True, help="the MLflow artifact folder holding <run_id>/artifacts/model/network.pt")
    parser.add_argument("--dataset", default="pacs")
    parser.add_argument("--data-root", default=default_data_root)
    parser.add_argument("--out", required=True)


def read_rows(paths: list[str], target: str) -> list[dict]:
    """The rows of ``target`` that name a run, from every file in ``paths``."""
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("target") == target and row.get("run_id"):
                    rows.append(row)
    return rows


def run_label(row: dict) -> str:
    """The learner of a row, with its meta_grid.py arm where it has one (``dann init-inner0``)."""
    arm = row.get("arm")
    return row["base"] if arm in (None, "base") else f"{row['base']} {arm}"


def find_model(artifacts: Path, run_id: str) -> Path | None:
    """``network.pt`` of ``run_id`` under an MLflow artifact folder (server or file store layout)."""
    for candidate in (artifacts / run_id / "artifacts" / "model" / "network.pt", artifacts / run_id / "model" / "network.pt"):
        if candidate.is_file():
            return candidate
    return None


def logits(network, images: np.ndarray, flip: bool = False, batch: int = 64) -> torch.Tensor:
    """Eval-mode logits of uint8 NCHW ``images``; ``flip``: of their horizontal mirror images."""
    out = []
    network.eval()
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.array(images[start:start + batch])).float().div_(255)
            out.append(network(x.flip(3) if flip else x))
    return torch.cat(out) if out else torch.zeros(0)
