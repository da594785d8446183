"""Every hyperparameter of a run, collected from where it is declared (DomainBed style).

Learners (``--base``) and meta terms (``--meta``) declare theirs as the class attribute
``HPARAMS`` beside the code that reads them; the trainer's are on
:class:`~dgmeta.training.stepper.StageStepper`, weight averaging's in
:mod:`dgmeta.training.averaging`, and the run's own (network, data, head) below.
``default_hparams(base, meta)`` gives the defaults; ``random_hparams(base, meta, seed)`` draws a
reproducible random configuration for sweeps. ``--set key=value`` overrides either, with the value
parsed to the default's type. Unknown keys are refused, and every value is checked against its
declared :class:`~dgmeta.hparam_spec.Domain` in :func:`apply_overrides`, the one door through which
``--set``, pipeline specs and sweeps pass: a run that would crash on a negative learning rate or
silently train with an unknown schedule is refused before it exists. Code reads ``hparams[key]``:
the dict always holds every declared key.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from dgmeta.errors import ConfigError
from dgmeta.hparam_spec import FLAG, Domain, HParam, at_least, fraction, one_of, parse_value, positive
from dgmeta.learners.registry import learner_class, learner_names
from dgmeta.meta.registry import meta_term_classes, meta_term_names
from dgmeta.training import averaging
from dgmeta.training.stepper import StageStepper

__all__ = [
    "Domain", "HParam", "RUN_HPARAMS", "apply_overrides", "check_value", "declaration", "default_hparams",
    "describe", "hparam_table", "parse_value", "random_hparams",
]

#: read by the run itself: the network it builds, the data it feeds, the head it starts from
RUN_HPARAMS: dict[str, HParam] = {
    "dropout": HParam(0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), "dropout before the classifier", fraction()),
    "freeze_levels": HParam(2, lambda r: int(r.choice([0, 1, 2, 3])), "feature levels of the backbone left untrained (2: everything up to stride 4); 0 under --weights none", at_least(0, integer=True)),
    "augment": HParam("standard", lambda r: "standard", "standard | none: batched random-resized-crop, flip, colour jitter", one_of("standard", "none")),
    "head_init": HParam("random", lambda r: str(r.choice(["random", "probe"])), "random | probe: start the classifier from a logistic regression on the frozen features (LP-FT)", one_of("random", "probe")),
    "probe_C": HParam(0.1, lambda r: float(r.choice([0.01, 0.1, 1.0])), "inverse L2 strength of head_init=probe's logistic regression", positive()),
}


def common_table() -> dict[str, HParam]:
    """What every run has, whatever its learner and meta terms."""
    return {**StageStepper.HPARAMS, **RUN_HPARAMS, **averaging.HPARAMS}


def hparam_table(base: str, meta: str = "none") -> dict[str, HParam]:
    """Name -> declaration for ``--base base --meta meta``. Meta terms sharing a key (the episode
    settings) each declare their own default; the later term in ``a+b`` wins."""
    table = common_table()
    table.update(learner_class(base).HPARAMS)
    for term in meta_term_classes(meta):
        table.update(term.HPARAMS)
    return table


def default_hparams(base: str, meta: str = "none") -> dict[str, Any]:
    return {k: v.default for k, v in hparam_table(base, meta).items()}


def random_hparams(base: str, meta: str, seed: int) -> dict[str, Any]:
    """A seeded random draw; the same (base, meta, seed) always gives the same values."""
    table = hparam_table(base, meta)
    out = {}
    for key in sorted(table):
        rng = np.random.RandomState(_stable_seed(key, seed))
        out[key] = table[key].draw(rng)
    return out


def describe(base: str, meta: str = "none") -> dict[str, str]:
    return {k: v.help for k, v in hparam_table(base, meta).items()}


def _stable_seed(key: str, seed: int) -> int:
    return (zlib.crc32(key.encode()) + 7919 * seed) % (2**31)


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


def all_declarations() -> dict[str, HParam]:
    """Every declared key, from every learner and meta term (the first declaration of a shared key)."""
    tables = [common_table()]
    tables += [learner_class(name).HPARAMS for name in learner_names()]
    tables += [term.HPARAMS for name in meta_term_names() for term in meta_term_classes(name)]
    out: dict[str, HParam] = {}
    for table in tables:
        for key, spec in table.items():
            out.setdefault(key, spec)
    return out


def declaration(key: str) -> HParam | None:
    """The declaration of ``key`` in any learner's or meta term's table."""
    return all_declarations().get(key)


def check_value(key: str, value: Any, raw: Any = None) -> Any:
    """``value`` (an int where a float is declared becomes that float), or a ConfigError naming
    the allowed values."""
    spec = declaration(key)
    if spec is None:
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
