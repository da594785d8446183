"""How a hyperparameter is declared: its default, its seeded random draw, a help line and the
:class:`Domain` of values it may take. Learners, meta terms and the trainer declare theirs as a
class attribute ``HPARAMS`` beside the code that reads them; :mod:`dgmeta.hparams` collects them."""

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
    domain: Domain


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
