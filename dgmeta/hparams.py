"""Every hyperparameter in one registry: defaults plus seeded random draws (DomainBed style).

``default_hparams(base, meta)`` gives the defaults; ``random_hparams(base, meta, seed)`` draws
a reproducible random configuration for sweeps. ``--set key=value`` overrides either, with the
value parsed to the default's type. Unknown keys are refused, and every value is checked against
its declared :class:`Domain` (a range or a set of choices) in :func:`apply_overrides`, the one
door through which ``--set``, pipeline specs and sweeps pass: a run that would crash on a negative
learning rate or silently train with an unknown schedule is refused before it exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from dgmeta.errors import ConfigError

Draw = Callable[[np.random.RandomState], Any]


@dataclass(frozen=True)
class Domain:
    """The values a hyperparameter may take: ``choices``, or a range (``low``/``high``, each closed
    unless ``*_open``), integers only when ``integer``. Non-finite numbers are never allowed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    choices: tuple = ()
    text: bool = False  # any string (a path, a name)

    def allows(self, value: Any) -> bool:
        if self.text:
            return isinstance(value, str)
        if self.choices:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        if self.text:
            return "a text"
        if self.choices:
            return "one of: " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"


def positive(integer: bool = False) -> Domain:
    return Domain(low=1, integer=True) if integer else Domain(low=0, low_open=True)


def at_least(low: float, integer: bool = False) -> Domain:
    return Domain(low=low, integer=integer)


def fraction(low_open: bool = False, high_open: bool = True) -> Domain:
    """A share or probability: [0, 1) by default."""
    return Domain(low=0, high=1, low_open=low_open, high_open=high_open)


def one_of(*choices: Any) -> Domain:
    return Domain(choices=tuple(choices))


FLAG = one_of(True, False)
TEXT = Domain(text=True)


class HParam(NamedTuple):
    """One hyperparameter's declaration: its default, its random draw for sweeps, a help line and
    the domain every value (default, draw or override) must lie in."""

    default: Any
    draw: Draw
    help: str
    domain: Domain | None = None  # None: not declared yet (tests/test_hparam_domains.py flags it)


# name -> declaration
_COMMON: dict[str, HParam] = {
    "lr": HParam(1e-4, lambda r: float(10 ** r.uniform(-4.5, -3.3)), "learning rate of the backbone (for --set optimizer=sgd use about 0.01)", positive()),
    "head_lr_mult": HParam(10.0, lambda r: float(r.choice([1.0, 10.0])), "learning-rate multiplier for heads trained from scratch", positive()),
    "momentum": HParam(0.9, lambda r: 0.9, "SGD momentum (Nesterov)", fraction()),
    "weight_decay": HParam(5e-4, lambda r: float(10 ** r.uniform(-6, -3)), "L2 weight decay", at_least(0)),
    "lr_schedule": HParam("cosine", lambda r: "cosine", "cosine | constant | dann (mu0/(1+10p)^0.75)", one_of("cosine", "constant", "dann")),
    "warmup_steps": HParam(0, lambda r: 0, "linear warm-up steps", at_least(0, integer=True)),
    "grad_clip": HParam(0.0, lambda r: 0.0, "clip the gradient norm (0: off)", at_least(0)),
    "dropout": HParam(0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), "dropout before the classifier", fraction()),
    "optimizer": HParam("adam", lambda r: "adam", "adam (AdamW, DomainBed's fine-tuning choice) | sgd (Nesterov momentum)", one_of("adam", "sgd")),
    "freeze_bn": HParam(True, lambda r: bool(r.choice([True, False])), "batch norm keeps its ImageNet statistics (DomainBed freezes it); off under --weights none", FLAG),
    "freeze_levels": HParam(2, lambda r: int(r.choice([0, 1, 2, 3])), "feature levels of the backbone left untrained (2: everything up to stride 4); 0 under --weights none", at_least(0, integer=True)),
    "ema_decay": HParam(0.995, lambda r: float(r.choice([0.99, 0.995, 0.999])), "decay of --average ema", fraction(low_open=True)),
    "swad_converge": HParam(3, lambda r: 3, "SWAD: evaluations whose first is lowest to start averaging", positive(integer=True)),
    "swad_tolerance": HParam(6, lambda r: 6, "SWAD: evaluations above the tolerance that end averaging", positive(integer=True)),
    "swad_tolerance_ratio": HParam(0.3, lambda r: 0.3, "SWAD: loss up to (1 + ratio) x the lowest stays in the region", at_least(0)),
    "augment": HParam("standard", lambda r: "standard", "standard | none: batched random-resized-crop, flip, colour jitter", one_of("standard", "none")),
    "head_init": HParam("random", lambda r: str(r.choice(["random", "probe"])), "random | probe: start the classifier from a logistic regression on the frozen features (LP-FT)", one_of("random", "probe")),
    "probe_C": HParam(0.1, lambda r: float(r.choice([0.01, 0.1, 1.0])), "inverse L2 strength of head_init=probe's logistic regression", positive()),
}

_LEARNERS: dict[str, dict[str, HParam]] = {
    "erm": {},
    "dann": {
        "lambda_max": HParam(1.0, lambda r: float(10 ** r.uniform(-1, 0.5)), "final weight of the adversarial loss", at_least(0)),
        "lambda_gamma": HParam(10.0, lambda r: 10.0, "gamma in lambda(p) = 2/(1+exp(-gamma p)) - 1", positive()),
        "disc_hidden": HParam(256, lambda r: int(2 ** r.randint(6, 10)), "domain discriminator width", positive(integer=True)),
        "disc_layers": HParam(2, lambda r: int(r.choice([1, 2, 3])), "hidden layers of the discriminator", positive(integer=True)),
        "disc_dropout": HParam(0.5, lambda r: float(r.choice([0.0, 0.5])), "discriminator dropout", fraction()),
    },
    "mcd": {
        "num_k": HParam(4, lambda r: int(r.choice([1, 2, 4])), "generator steps (C) per iteration", positive(integer=True)),
    },
    "mme": {
        "mme_lambda": HParam(0.1, lambda r: float(r.choice([0.05, 0.1, 0.2])), "weight of the minimax target entropy (MME's lambda)", at_least(0)),
        "mme_temperature": HParam(0.05, lambda r: float(r.choice([0.05, 0.1])), "temperature T of the cosine classifier", positive()),
    },
    "jigen": {
        "num_permutations": HParam(30, lambda r: int(r.choice([30, 100])), "permutation classes P", positive(integer=True)),
        "unshuffled_ratio": HParam(0.7, lambda r: float(r.uniform(0.6, 0.9)), "fraction of each batch left unshuffled (beta)", fraction(high_open=False)),
        "jigsaw_weight": HParam(0.7, lambda r: float(r.uniform(0.1, 0.9)), "auxiliary jigsaw loss weight (alpha)", at_least(0)),
        "target_jigsaw_weight": HParam(0.7, lambda r: float(r.uniform(0.1, 0.9)), "jigsaw weight on target images (DA)", at_least(0)),
        "entropy_weight": HParam(0.1, lambda r: float(r.choice([0.05, 0.1, 0.2])), "target entropy weight (DA)", at_least(0)),
        "grid": HParam(3, lambda r: 3, "tiles per side", at_least(2, integer=True)),
    },
}

class _Text(Domain):
    """Any text (a file path); whether the file fits is checked where it is used."""

    def allows(self, value: Any) -> bool:
        return isinstance(value, str)

    def describe(self) -> str:
        return "a text value (a path, or empty)"


_META: dict[str, dict[str, HParam]] = {
    "none": {},
    "init": {
        "inner_lr": HParam(1.0, lambda r: float(r.choice([0.5, 1.0, 2.0])), "inner step size as a multiple of each parameter group's outer learning rate (0: no inner step, the control 'extra supervised term, no meta-learning')", at_least(0)),
        "inner_update": HParam("outer", lambda r: "outer", "outer (the outer optimizer's kind of step: SGD, or a fresh Adam's first step under optimizer=adam) | sgd | adam", one_of("outer", "sgd", "adam")),
        "inner_steps": HParam(1, lambda r: int(r.choice([1, 2])), "inner steps k", positive(integer=True)),
        "meta_order": HParam(1, lambda r: 1, "1: first-order, 2: exact second-order", one_of(1, 2)),
        "meta_update": HParam("maml", lambda r: "maml", "maml (first-order or exact MAML, see meta_order) | shortest_path (MetaDA's path-sum gradient, first order)", one_of("maml", "shortest_path")),
        "meta_weight": HParam(1.0, lambda r: float(r.choice([0.5, 1.0])), "weight of the meta-gradient in the online update (DomainBed MLDG's beta)", at_least(0)),
        "meta_schedule": HParam("online", lambda r: "online", "online | offline", one_of("online", "offline")),
        "offline_meta_steps": HParam(100, lambda r: 100, "meta-iterations before base training (offline)", at_least(0, integer=True)),
        "meta_lr": HParam(0.01, lambda r: float(10 ** r.uniform(-3, -1.5)), "outer learning rate (offline)", positive()),
        "meta_test_domains": HParam(1, lambda r: 1, "held-out source domains per episode", positive(integer=True)),
        "meta_splits": HParam("all", lambda r: "all", "all (average the meta term over every held-out split each step, as DomainBed's MLDG) | sample (one split a step, in rounds)", one_of("all", "sample")),
        "meta_episode": HParam("sources", lambda r: "sources", "sources (hold out source domains; under ssda an extension) | target_shots (ssda: MetaDA's episode, meta-test = the labelled target shots)", one_of("sources", "target_shots")),
        "episode_bn": HParam("base", lambda r: "base", "base (episodes use the base step's batch-norm mode: frozen under freeze_bn) | batch (batch statistics in episodes)", one_of("base", "batch")),
        "meta_batch_fraction": HParam(1.0, lambda r: float(r.choice([0.5, 1.0])), "share of each domain's batch used in the episode (1: full per-domain batches, as MLDG)", fraction(low_open=True, high_open=False)),
    },
    "critic": {
        "critic_lr": HParam(1e-3, lambda r: float(10 ** r.uniform(-4, -2)), "Adam learning rate of the critic", positive()),
        "critic_hidden": HParam(128, lambda r: int(r.choice([64, 128, 256])), "critic hidden width", positive(integer=True)),
        "critic_weight": HParam(0.01, lambda r: float(r.choice([0.001, 0.01, 0.1])), "weight of h_omega in the model's loss (0.01: the official PACS code)", at_least(0)),
        "critic_inner_lr": HParam(1.0, lambda r: float(r.choice([0.5, 1.0, 2.0])), "alpha for theta_old/theta_new as a multiple of each parameter group's outer learning rate", at_least(0)),
        "warm_start": HParam("", lambda r: "", "path to a dgmeta model/network.pt (e.g. an ERM run's) whose featurizer and classifier the run starts from; empty: none", _Text()),
        "meta_test_domains": HParam(1, lambda r: 1, "held-out source domains per episode", positive(integer=True)),
        "meta_splits": HParam("sample", lambda r: "sample", "sample (one held-out split a step, as the official code) | all (average over every split)", one_of("all", "sample")),
        "meta_episode": HParam("sources", lambda r: "sources", "sources | target_shots (ssda: meta-test = the labelled target shots)", one_of("sources", "target_shots")),
        "episode_bn": HParam("base", lambda r: "base", "base (the base step's batch-norm mode) | batch (batch statistics in episodes)", one_of("base", "batch")),
        "meta_batch_fraction": HParam(1.0, lambda r: float(r.choice([0.5, 1.0])), "share of each domain's batch used in the episode", fraction(low_open=True, high_open=False)),
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


def _table(base: str, meta: str) -> dict[str, HParam]:
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
        parsed = parse_value(key, value, out[key]) if isinstance(value, str) else value
        out[key] = check_value(key, parsed, value)
    return out


def declaration(key: str) -> HParam | None:
    """The declaration of ``key`` in any learner's or meta mode's table."""
    for table in (_COMMON, *_LEARNERS.values(), *_META.values()):
        if key in table:
            return HParam(*table[key])
    return None


def check_value(key: str, value: Any, raw: Any = None) -> Any:
    """``value`` (an int where a float is declared becomes that float), or a ConfigError naming
    the allowed values."""
    spec = declaration(key)
    if spec is None or spec.domain is None:
        return value
    if isinstance(spec.default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not spec.domain.allows(value):
        shown = raw if isinstance(raw, str) else value
        raise ConfigError(
            f"--set {key}={shown}: {key} must be {spec.domain.describe()}",
            f"pass e.g. --set {key}={_shown(spec.default)}",
        )
    return value


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
