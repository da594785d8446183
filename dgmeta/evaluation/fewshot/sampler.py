"""N-way K-shot episodes over a label array.

Episode ``i`` draws from a generator seeded with ``(seed, i)`` alone, so every method sees the
very same episodes (a paired comparison), a re-run reproduces them, and the classes of episode
``i`` do not depend on the shot count (the class draw comes first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from dgmeta.errors import ConfigError


@dataclass(frozen=True)
class Episode:
    """Indices into the evaluated image array; labels are episode-local (``0..ways-1``)."""

    index: int
    classes: np.ndarray  # dataset labels of the episode's classes, in episode-label order
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray

    @property
    def ways(self) -> int:
        return len(self.classes)


def parse_ways(ways: int | str) -> int | str:
    """``"all"`` or a positive integer (from the CLI, both arrive as text)."""
    if isinstance(ways, str) and ways.strip().lower() == "all":
        return "all"
    try:
        value = int(ways)
    except (TypeError, ValueError):
        raise ConfigError(f"--ways {ways!r} is not a number", "pass a number of classes such as 5, or --ways all") from None
    if value < 2:
        raise ConfigError(f"--ways {value} is too small", "an episode needs at least 2 classes; pass e.g. --ways 5 or --ways all")
    return value


class EpisodeSampler:
    """``ways``-way ``shots``-shot episodes with ``queries`` query images per class.

    Within an episode, each class's support and query images come from one draw without
    replacement, so support and query never share an image and no image appears twice.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        ways: int | str,
        shots: int,
        queries: int,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        domain: str | None = None,
    ):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ConfigError(f"{_where(domain)} has no images", "check --data/--domain and the data root")
        if shots < 1:
            raise ConfigError(f"--shots must be positive, got {shots}", "pass e.g. --shots 1,5")
        if queries < 1:
            raise ConfigError(f"--queries must be positive, got {queries}", "pass e.g. --queries 15")
        self.labels = labels
        self.shots = int(shots)
        self.queries = int(queries)
        self.seed = int(seed)
        self.present, counts = np.unique(labels, return_counts=True)
        self.ways = self._check_ways(parse_ways(ways), domain)
        self._check_counts(counts, class_names, domain)
        # Stable order: the same dataset gives the same pools, hence the same episodes.
        self._pools = [np.flatnonzero(labels == c) for c in self.present]

    def _check_ways(self, ways: int | str, domain: str | None) -> int:
        available = len(self.present)
        if ways == "all":
            return available
        if ways > available:
            raise ConfigError(
                f"--ways {ways} but {_where(domain)} has only {available} classes",
                f"pass --ways all or a number up to {available}",
            )
        return int(ways)

    def _check_counts(self, counts: np.ndarray, class_names, domain: str | None) -> None:
        need = self.shots + self.queries
        short = np.flatnonzero(counts < need)
        if len(short) == 0:
            return
        worst = short[np.argmin(counts[short])]
        label = int(self.present[worst])
        name = class_names[label] if class_names is not None and label < len(class_names) else f"#{label}"
        raise ConfigError(
            f"class {name!r} of {_where(domain)} has only {int(counts[worst])} images, fewer than "
            f"shots + queries = {self.shots} + {self.queries} = {need}",
            f"lower --shots or --queries so that they sum to at most {int(counts[worst])}",
        )

    def episode(self, index: int) -> Episode:
        rng = np.random.default_rng([self.seed, int(index)])
        chosen = rng.choice(len(self.present), size=self.ways, replace=False)
        need = self.shots + self.queries
        support, query = [], []
        for pool_index in chosen:
            pool = self._pools[pool_index]
            picked = pool[rng.choice(len(pool), size=need, replace=False)]
            support.append(picked[: self.shots])
            query.append(picked[self.shots :])
        local = np.arange(self.ways)
        return Episode(
            index=int(index),
            classes=self.present[chosen],
            support=np.concatenate(support),
            support_labels=np.repeat(local, self.shots),
            query=np.concatenate(query),
            query_labels=np.repeat(local, self.queries),
        )

    def episodes(self, count: int) -> Iterator[Episode]:
        for index in range(count):
            yield self.episode(index)


def _where(domain: str | None) -> str:
    return f"domain {domain!r}" if domain else "the evaluated domain"
