"""Student-t confidence intervals and paired t-tests (scipy.stats).

Spread convention, the same in every dgmeta report: sample standard deviation (n-1 in the
denominator); 95% CI half-width = t(0.975, n-1) * std / sqrt(n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (n-1) and 95% CI half-width of n values."""

    n: int
    mean: float
    std: float
    ci95: float


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan)
    mean = sum(values) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Summary(n, mean, std, t_quantile(0.975, n - 1) * std / math.sqrt(n))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided paired t-test of ``a - b``; (t, p), NaN when undefined (n < 2 or zero spread)."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    if n < 2:
        return math.nan, math.nan
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0.0:  # scipy would warn and return NaN too; say it without the warning
        return math.nan, math.nan
    t = mean / (sd / math.sqrt(n))
    return t, t_two_sided_p(t, n - 1)


def t_quantile(probability: float, dof: int) -> float:
    return float(_scipy_stats.t.ppf(probability, dof))


def t_two_sided_p(t: float, dof: int) -> float:
    return float(2.0 * _scipy_stats.t.sf(abs(t), dof))
