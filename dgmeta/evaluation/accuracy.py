"""Accuracy of a classifier on uint8 image arrays, batched and without gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dgmeta.device import autocast, module_device


def to_float_images(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float().div_(255.0)


def precision_context(precision: str, device_type: str = "cpu"):
    """Autocast for ``precision`` on ``device_type`` (dgmeta.device.autocast)."""
    return autocast(precision, device_type)


# Small inference batches are both faster on CPU (the activations stay in cache) and lighter;
# 256-image batches lifted a full PACS run's peak above its training steps' (benchmarks/README.md,
# "Notes on the memory figures").
EVAL_BATCH_SIZE = 32


@torch.no_grad()
def predict_array(
    predict: nn.Module,
    images: np.ndarray,
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "fp32",
    device: torch.device | str | None = None,
    return_features: nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted class of every image (and optionally features from ``return_features``), computed
    on ``device`` (default: where ``predict`` lives)."""
    device = module_device(predict) if device is None else torch.device(device)
    was_training = predict.training
    predict.eval()
    preds, feats = [], []
    try:
        for start in range(0, len(images), batch_size):
            x = to_float_images(torch.from_numpy(np.array(images[start : start + batch_size])).to(device, non_blocking=True))
            with autocast(precision, device.type):
                if return_features is not None:
                    f = return_features(x)
                    feats.append(f.float().cpu())
                logits = predict(x)
            preds.append(logits.argmax(1).cpu())
    finally:
        predict.train(was_training)
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    feat = torch.cat(feats).numpy() if feats else None
    return pred, feat


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((pred == labels).mean())


@torch.no_grad()
def predict_with_loss(model: nn.Module, images: np.ndarray, labels: np.ndarray, precision: str = "fp32", batch_size: int = EVAL_BATCH_SIZE) -> tuple[np.ndarray, float]:
    """Predicted classes and the mean cross-entropy over ``images`` (NaN for none)."""
    device = module_device(model)
    was_training = model.training
    model.eval()
    preds, total = [], 0.0
    try:
        for start in range(0, len(images), batch_size):
            x = to_float_images(torch.from_numpy(np.array(images[start : start + batch_size])).to(device))
            y = torch.as_tensor(np.asarray(labels[start : start + batch_size]), dtype=torch.long).to(device)
            with autocast(precision, device.type):
                logits = model(x).float()
            total += torch.nn.functional.cross_entropy(logits, y, reduction="sum")  # summed on the device: no sync per batch
            preds.append(logits.argmax(1).cpu())
    finally:
        model.train(was_training)
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    return pred, (float(total) / len(labels) if len(labels) else float("nan"))
