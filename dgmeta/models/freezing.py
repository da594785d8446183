"""Keep the early, generic part of a pretrained backbone as it is.

Edge and texture filters of the first stages transfer across PACS-like domains almost unchanged,
while they are the most expensive part of a CPU step (the highest resolutions). Freezing them
removes their backward pass; freezing batch-norm statistics keeps the ImageNet statistics that
small per-domain batches would otherwise overwrite (DomainBed freezes batch norm too).
"""

from __future__ import annotations

from torch import nn

from dgmeta.errors import ConfigError


def frozen_prefix(body: nn.Module, levels: int) -> list[str]:
    """Names of the parameters up to and including feature level ``levels`` (timm's
    ``feature_info``: level 1 ends at stride 2, level 2 at stride 4, ...); 0 freezes nothing."""
    if levels <= 0:
        return []
    info = getattr(body, "feature_info", None)
    if not info:
        raise ConfigError(f"freeze_levels={levels}: this backbone has no timm feature_info", "use --set freeze_levels=0")
    entries = list(info) if not hasattr(info, "get_dicts") else info.get_dicts()
    if levels > len(entries) - 1:
        raise ConfigError(
            f"freeze_levels={levels} would freeze the whole backbone ({len(entries)} feature levels)",
            f"use --set freeze_levels=0..{len(entries) - 1}",
        )
    last_module = entries[levels - 1]["module"]
    names = [name for name, _ in body.named_parameters()]
    last = max((i for i, n in enumerate(names) if n == last_module or n.startswith(last_module + ".")), default=None)
    if last is None:
        return []
    return names[: last + 1]


def freeze_early_levels(body: nn.Module, levels: int) -> list[str]:
    """Stop gradients into the first ``levels`` feature levels of ``body``; returns what was frozen."""
    names = set(frozen_prefix(body, levels))
    for name, param in body.named_parameters():
        if name in names:
            param.requires_grad_(False)
    return sorted(names)


def batchnorm_eval(module: nn.Module) -> None:
    """Batch-norm layers normalise with their running statistics and stop updating them; their
    affine weights still train if they require gradients."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
