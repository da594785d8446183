"""Every hyperparameter in one registry: defaults plus seeded random draws (DomainBed style).

``default_hparams(base, meta)`` gives the defaults; ``random_hparams(base, meta, seed)`` draws
a reproducible random configuration for sweeps. ``--set key=value`` overrides either, with the
value parsed to the default's type. Unknown keys are refused.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dgmeta.errors import ConfigError

Draw = Callable[[np.random.RandomState], Any]

# name -> (default, random draw, help)
_COMMON: dict[str, tuple[Any, Draw, str]] = {
    "lr": (1e-4, lambda r: float(10 ** r.uniform(-4.5, -3.3)), "learning rate of the backbone (for --set optimizer=sgd use about 0.01)"),
    "head_lr_mult": (10.0, lambda r: float(r.choice([1.0, 10.0])), "learning-rate multiplier for heads trained from scratch"),
    "momentum": (0.9, lambda r: 0.9, "SGD momentum (Nesterov)"),
    "weight_decay": (5e-4, lambda r: float(10 ** r.uniform(-6, -3)), "L2 weight decay"),
    "lr_schedule": ("cosine", lambda r: "cosine", "cosine | constant | dann (mu0/(1+10p)^0.75)"),
    "warmup_steps": (0, lambda r: 0, "linear warm-up steps"),
    "grad_clip": (0.0, lambda r: 0.0, "clip the gradient norm (0: off)"),
    "dropout": (0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), "dropout before the classifier"),
    "optimizer": ("adam", lambda r: "adam", "adam (AdamW, DomainBed's fine-tuning choice) | sgd (Nesterov momentum)"),
    "freeze_bn": (True, lambda r: bool(r.choice([True, False])), "batch norm keeps its ImageNet statistics (DomainBed freezes it); off under --weights none"),
    "freeze_levels": (2, lambda r: int(r.choice([0, 1, 2, 3])), "feature levels of the backbone left untrained (2: everything up to stride 4); 0 under --weights none"),
    "ema_decay": (0.995, lambda r: float(r.choice([0.99, 0.995, 0.999])), "decay of --average ema"),
    "swad_converge": (3, lambda r: 3, "SWAD: evaluations whose first is lowest to start averaging"),
    "swad_tolerance": (6, lambda r: 6, "SWAD: evaluations above the tolerance that end averaging"),
    "swad_tolerance_ratio": (0.3, lambda r: 0.3, "SWAD: loss up to (1 + ratio) x the lowest stays in the region"),
    "augment": ("standard", lambda r: "standard", "standard | none: batched random-resized-crop, flip, colour jitter"),
}

_LEARNERS: dict[str, dict[str, tuple[Any, Draw, str]]] = {
    "erm": {},
    "dann": {
        "lambda_max": (1.0, lambda r: float(10 ** r.uniform(-1, 0.5)), "final weight of the adversarial loss"),
        "lambda_gamma": (10.0, lambda r: 10.0, "gamma in lambda(p) = 2/(1+exp(-gamma p)) - 1"),
        "disc_hidden": (256, lambda r: int(2 ** r.randint(6, 10)), "domain discriminator width"),
        "disc_layers": (2, lambda r: int(r.choice([1, 2, 3])), "hidden layers of the discriminator"),
        "disc_dropout": (0.5, lambda r: float(r.choice([0.0, 0.5])), "discriminator dropout"),
    },
    "mcd": {
        "num_k": (4, lambda r: int(r.choice([1, 2, 4])), "generator steps (C) per iteration"),
    },
    "jigen": {
        "num_permutations": (30, lambda r: int(r.choice([30, 100])), "permutation classes P"),
        "unshuffled_ratio": (0.7, lambda r: float(r.uniform(0.6, 0.9)), "fraction of each batch left unshuffled (beta)"),
        "jigsaw_weight": (0.7, lambda r: float(r.uniform(0.1, 0.9)), "auxiliary jigsaw loss weight (alpha)"),
        "target_jigsaw_weight": (0.7, lambda r: float(r.uniform(0.1, 0.9)), "jigsaw weight on target images (DA)"),
        "entropy_weight": (0.1, lambda r: float(r.choice([0.05, 0.1, 0.2])), "target entropy weight (DA)"),
        "grid": (3, lambda r: 3, "tiles per side"),
    },
}

_META: dict[str, dict[str, tuple[Any, Draw, str]]] = {
    "none": {},
    "init": {
        "inner_lr": (0.01, lambda r: float(10 ** r.uniform(-3, -1)), "inner-loop SGD step size alpha"),
        "inner_steps": (1, lambda r: int(r.choice([1, 2])), "inner steps k"),
        "meta_order": (1, lambda r: 1, "1: first-order, 2: exact second-order"),
        "meta_weight": (1.0, lambda r: float(r.choice([0.5, 1.0])), "weight of the meta-gradient in the online update"),
        "meta_schedule": ("online", lambda r: "online", "online | offline"),
        "offline_meta_steps": (100, lambda r: 100, "meta-iterations before base training (offline)"),
        "meta_lr": (0.01, lambda r: float(10 ** r.uniform(-3, -1.5)), "outer learning rate (offline)"),
        "meta_test_domains": (1, lambda r: 1, "held-out source domains per episode"),
        "meta_batch_fraction": (0.5, lambda r: float(r.choice([0.5, 1.0])), "share of each domain's batch used in the episode"),
    },
    "critic": {
        "critic_lr": (1e-3, lambda r: float(10 ** r.uniform(-4, -2)), "Adam learning rate of the critic"),
        "critic_hidden": (128, lambda r: int(r.choice([64, 128, 256])), "critic hidden width"),
        "critic_weight": (1.0, lambda r: float(r.choice([0.1, 1.0])), "weight of h_omega in the model's loss"),
        "critic_inner_lr": (0.01, lambda r: float(10 ** r.uniform(-3, -1)), "alpha for theta_old/theta_new"),
        "meta_test_domains": (1, lambda r: 1, "held-out source domains per episode"),
        "meta_batch_fraction": (0.5, lambda r: float(r.choice([0.5, 1.0])), "share of each domain's batch used in the episode"),
    },
}


def _meta_parts(meta: str) -> list[str]:
    parts = meta.split("+") if meta else ["none"]
    for part in parts:
        if part not in _META:
            raise ConfigError(
                f"unknown --meta {meta!r}", "choose one of: none, init, critic, init+critic"
            )
    return parts


def _table(base: str, meta: str) -> dict[str, tuple[Any, Draw, str]]:
    if base not in _LEARNERS:
        raise ConfigError(f"unknown --base {base!r}", f"choose one of: {', '.join(sorted(_LEARNERS))}")
    table = dict(_COMMON)
    table.update(_LEARNERS[base])
    for part in _meta_parts(meta):
        table.update(_META[part])
    return table


def default_hparams(base: str, meta: str = "none") -> dict[str, Any]:
    return {k: v[0] for k, v in _table(base, meta).items()}


def random_hparams(base: str, meta: str, seed: int) -> dict[str, Any]:
    """A seeded random draw; the same (base, meta, seed) always gives the same values."""
    table = _table(base, meta)
    out = {}
    for key in sorted(table):
        rng = np.random.RandomState(_stable_seed(key, seed))
        out[key] = table[key][1](rng)
    return out


def describe(base: str, meta: str = "none") -> dict[str, str]:
    return {k: v[2] for k, v in _table(base, meta).items()}


def _stable_seed(key: str, seed: int) -> int:
    import zlib

    return (zlib.crc32(key.encode()) + 7919 * seed) % (2**31)


def parse_value(key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except ValueError:
        raise ConfigError(
            f"--set {key}={raw}: expected {type(default).__name__}",
            f"give a {type(default).__name__} value, e.g. {key}={default}",
        ) from None


def apply_overrides(hparams: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Overrides as ``{"lr": 0.1}`` or ``["lr=0.1"]``; unknown keys are refused."""
    out = dict(hparams)
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        for text in overrides:
            if "=" not in text:
                raise ConfigError(f"--set {text!r} is not key=value", "write e.g. --set lr=0.005")
            key, raw = text.split("=", 1)
            items.append((key.strip(), raw.strip()))
    for key, value in items:
        if key not in out:
            raise ConfigError(
                f"unknown hyperparameter {key!r} for this base/meta",
                f"known: {', '.join(sorted(out))}",
            )
        out[key] = parse_value(key, value, out[key]) if isinstance(value, str) else value
    return out
