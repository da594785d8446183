"""Saving and loading a trained network so it can be evaluated, few-shot adapted or served.

Format: one ``torch.save`` file holding plain tensors and JSON-able metadata, so it loads with
``weights_only=True``. ``meta`` carries at least ``backbone``, ``num_classes``, ``classes``,
``image_size``, ``dataset``, ``domains`` and ``meta_mode``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from dgmeta.errors import ConfigError
from dgmeta.models.network import DomainNetwork, create_network

FORMAT = "dgmeta.network/1"


def save_network(path: str | Path, network: DomainNetwork, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "meta": dict(meta),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written model behind
    return path


def load_network(path: str | Path) -> tuple[DomainNetwork, dict]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist", "give a path written by `dgmeta run` (model/network.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files
        raise ConfigError(
            f"model file {path} is corrupt or not a dgmeta network ({type(exc).__name__})",
            "re-export it with `dgmeta run`, or point to another file",
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a dgmeta network file", "give a model/network.pt written by `dgmeta run`")
    meta = payload["meta"]
    network = create_network(
        meta["backbone"], int(meta["num_classes"]), weights="none", dropout=float(meta.get("dropout", 0.0))
    )
    missing, unexpected = network.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{path} does not fit backbone {meta['backbone']!r} ({len(missing)} missing, {len(unexpected)} unexpected tensors)",
            "the file was written for another architecture; pass the matching --backbone",
        )
    return network, meta
