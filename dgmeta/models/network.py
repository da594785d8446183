"""Any timm backbone split into a featurizer and a linear classifier head.

The featurizer owns its input normalisation (the backbone's own mean/std as buffers), so a
network takes images as floats in [0, 1] and a saved network is self-contained for few-shot
evaluation and serving.
"""

from __future__ import annotations

import timm
import torch
from torch import Tensor, nn

from dgmeta.errors import ConfigError
from dgmeta.models.activations import use_output_saving_relu6


class Featurizer(nn.Module):
    def __init__(self, body: nn.Module, mean, std, channels_last: bool = True):
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.output_dim: int = int(body.num_features)
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)


class DomainNetwork(nn.Module):
    def __init__(self, featurizer: Featurizer, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.featurizer = featurizer
        self.feature_dim = featurizer.output_dim
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes)) if dropout > 0 else nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.featurizer(x))


def create_featurizer(backbone: str, weights: str = "none", channels_last: bool = True) -> Featurizer:
    """A timm model without its head, with ``weights`` = ``imagenet`` | ``none`` | a local file."""
    from dgmeta.models.weights import load_backbone_weights

    if backbone not in timm.list_models() and not timm.is_model(backbone):
        raise ConfigError(
            f"unknown backbone {backbone!r}",
            "give any timm model name (see `timm.list_models()`), e.g. tf_efficientnet_lite0 or resnet18",
        )
    body = timm.create_model(backbone, pretrained=False, num_classes=0)
    use_output_saving_relu6(body)  # same numbers, less activation memory, faster (see the module)
    mean, std = load_backbone_weights(body, backbone, weights)
    if channels_last:
        body = body.to(memory_format=torch.channels_last)
    return Featurizer(body, mean, std, channels_last=channels_last)


def create_network(
    backbone: str,
    num_classes: int,
    weights: str = "none",
    dropout: float = 0.0,
    channels_last: bool = True,
) -> DomainNetwork:
    return DomainNetwork(create_featurizer(backbone, weights, channels_last), num_classes, dropout)
