"""Batched training augmentation on float [0, 1] NCHW tensors, without per-sample Python.

Random resized crop and horizontal flip are one affine map per image, applied to the whole batch
with a single ``affine_grid`` + ``grid_sample``; colour jitter and random grayscale are
per-image factors broadcast over the batch. Every random number comes from the caller's
``torch.Generator``, so a seeded generator reproduces the exact batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; ``AugmentConfig.neutral()`` leaves images unchanged."""

    scale: tuple[float, float] = (0.7, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio (width / height)
    flip_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05  # fraction of a full turn of the hue circle
    grayscale_p: float = 0.1

    @classmethod
    def neutral(cls) -> "AugmentConfig":
        return cls(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def _gray(x: Tensor) -> Tensor:
    weights = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _crop_and_flip(x: Tensor, cfg: AugmentConfig, generator: torch.Generator, size: int | None = None) -> Tensor:
    n = x.shape[0]
    area = _uniform(n, *cfg.scale, generator)
    log_ratio = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator)
    # half-extent of the crop in grid_sample's [-1, 1] coordinates == its fraction of the side
    width = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    height = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    centre_x = (1 - width) * _uniform(n, -1.0, 1.0, generator)
    centre_y = (1 - height) * _uniform(n, -1.0, 1.0, generator)
    flip = torch.where(torch.rand(n, generator=generator, device=generator.device) < cfg.flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=generator.device)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    theta = theta.to(device=x.device, dtype=x.dtype)
    out_shape = [n, x.shape[1], size or x.shape[2], size or x.shape[3]]
    grid = F.affine_grid(theta, out_shape, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Hue shift as a rotation of the chroma plane in YIQ space (close to an HSV hue shift, all linear)."""
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    to_rgb = torch.linalg.inv(to_yiq)
    angle = 2 * math.pi * turns
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(turns), 3, 3, dtype=x.dtype, device=x.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = to_rgb @ rotation @ to_yiq  # [N, 3, 3]
    return torch.einsum("nij,njhw->nihw", matrix, x)


def _colour(x: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    n = x.shape[0]

    def factors(strength: float) -> Tensor:
        return _uniform(n, max(0.0, 1 - strength), 1 + strength, generator).to(x).view(n, 1, 1, 1)

    # all draws happen whatever the strengths, so changing one range leaves the others' draws alone
    brightness, contrast, saturation = factors(cfg.brightness), factors(cfg.contrast), factors(cfg.saturation)
    turns = _uniform(n, -cfg.hue, cfg.hue, generator).to(x)
    to_gray = (torch.rand(n, generator=generator, device=generator.device) < cfg.grayscale_p).to(x.device).view(n, 1, 1, 1)

    if cfg.brightness:
        x = (x * brightness).clamp(0, 1)
    if cfg.contrast:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean).clamp(0, 1)
    if cfg.saturation:
        gray = _gray(x)
        x = ((x - gray) * saturation + gray).clamp(0, 1)
    if cfg.hue:
        x = _rotate_hue(x, turns).clamp(0, 1)
    if cfg.grayscale_p:
        x = torch.where(to_gray, _gray(x).expand_as(x), x)
    return x


def augment_batch(x: Tensor, generator: torch.Generator, config: AugmentConfig | None = None, size: int | None = None) -> Tensor:
    """Random resized crop + horizontal flip + colour jitter + random grayscale of a float [0,1] NCHW batch.

    ``size``: side of the output crops (default: the input's); training below the test resolution
    this way costs one resampling, the crop's own.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"augment_batch expects [N, 3, H, W] images, got shape {tuple(x.shape)}")
    cfg = config or AugmentConfig()
    if x.shape[0] == 0:
        return x
    return _colour(_crop_and_flip(x, cfg, generator, size), cfg, generator)


def resize_batch(x: Tensor, size: int) -> Tensor:
    """Un-augmented batch at ``size`` pixels (antialiased when shrinking, like a decoder's resize)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])
