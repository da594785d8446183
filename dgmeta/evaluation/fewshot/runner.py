"""Runs few-shot episodes for several methods and shot counts, and reports mean accuracy ± 95% CI.

Every method sees the same episodes (episode ``i`` of a shot count is fixed by ``(seed, i)``),
so differences between methods are paired. The backbone embeds every image once; methods that
adapt the backbone (``finetune --finetune-all``, ``maml``) also get the episode's images.
"""

from __future__ import annotations

import math
import numbers
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dgmeta.errors import ConfigError
from dgmeta.evaluation.fewshot.embed import embed_images, images_as_float
from dgmeta.evaluation.fewshot.methods import FewShotMethod, Task, create_method
from dgmeta.evaluation.fewshot.progress import progress_bar
from dgmeta.evaluation.fewshot.sampler import EpisodeSampler, Episode


@dataclass(frozen=True)
class FewShotResult:
    method: str
    shots: int
    ways: int
    queries: int
    accuracy: float  # mean over episodes, in [0, 1]
    ci95: float  # 1.96 * std / sqrt(episodes)
    episodes: int
    seconds_per_episode: float


@dataclass(frozen=True)
class EpisodeRecord:
    method: str
    shots: int
    episode: int
    accuracy: float
    seconds: float
    classes: str  # dataset labels of the episode's classes, space-separated


@dataclass
class FewShotReport:
    results: list[FewShotResult]
    episodes: list[EpisodeRecord]
    ways: int
    queries: int
    seed: int
    info: dict = field(default_factory=dict)  # model, dataset, domain... for the report header

    def to_rows(self) -> list[dict]:
        return [asdict(r) for r in self.results]

    def episode_rows(self) -> list[dict]:
        return [asdict(r) for r in self.episodes]

    def result(self, method: str, shots: int) -> FewShotResult:
        for r in self.results:
            if r.method == method and r.shots == shots:
                return r
        raise KeyError((method, shots))

    def markdown(self) -> str:
        lines = []
        if self.info:
            lines.append(" · ".join(f"{k}: {v}" for k, v in self.info.items()))
            lines.append("")
        lines.append(f"{self.ways}-way, {self.queries} queries per class, seed {self.seed}")
        lines.append("")
        lines.append("| method | shots | accuracy (%) | ± 95% CI | episodes | s / episode |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for r in self.results:
            lines.append(
                f"| {r.method} | {r.shots} | {100 * r.accuracy:.2f} | {100 * r.ci95:.2f} | {r.episodes} | {r.seconds_per_episode:.4f} |"
            )
        return "\n".join(lines) + "\n"


def confidence95(accuracies: Sequence[float]) -> float:
    """Half-width of the normal 95% interval of the mean, the few-shot convention (population std)."""
    values = np.asarray(accuracies, dtype=np.float64)
    if len(values) == 0:
        return float("nan")
    return float(1.96 * values.std() / math.sqrt(len(values)))


def parse_shots(shots: str | int | Sequence[int]) -> list[int]:
    """``"1,5"`` / ``5`` / ``[1, 5]`` -> ``[1, 5]`` (positive, unique, in the given order)."""
    items = shots.split(",") if isinstance(shots, str) else [shots] if isinstance(shots, int) else list(shots)
    out: list[int] = []
    for item in items:
        try:
            value = int(str(item).strip())
        except ValueError:
            raise ConfigError(f"--shots {shots!r} is not a comma-separated list of numbers", "pass e.g. --shots 1,5") from None
        if value < 1:
            raise ConfigError(f"--shots must be positive, got {value}", "pass e.g. --shots 1,5")
        if value not in out:
            out.append(value)
    if not out:
        raise ConfigError("no --shots given", "pass e.g. --shots 1,5")
    return out


def check_episodes(episodes: int) -> int:
    if not isinstance(episodes, numbers.Integral) or episodes < 1:
        raise ConfigError(f"--episodes must be a positive integer, got {episodes}", "pass e.g. --episodes 600")
    return episodes


def build_methods(names: Sequence[str], network: nn.Module | None, meta: dict, finetune_all: bool = False) -> list[FewShotMethod]:
    """Methods by name; refuses unknown names and incompatible models before any work is done."""
    if not names:
        raise ConfigError("no few-shot --method given", "pass e.g. --method prototype --method linear")
    unique = list(dict.fromkeys(names))
    return [create_method(name, network, meta, finetune_all=finetune_all) for name in unique]


def build_samplers(
    labels, ways, shots: Sequence[int], queries: int, seed: int, class_names=None, domain: str | None = None
) -> dict[int, EpisodeSampler]:
    """One sampler per shot count; raises the one-line ConfigError for impossible episodes."""
    return {k: EpisodeSampler(labels, ways, k, queries, seed, class_names=class_names, domain=domain) for k in shots}


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads.

    Episode-sized work (a few dozen feature rows, or a backbone pass over ~100 small images)
    gains little from threads and loses a lot to their synchronisation when other processes
    share the cores (measured on 2 busy cores: benchmarks/README.md). Embedding the whole domain (large batches) keeps the configured threads.
    """
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _task(episode: Episode, features: Tensor, images, with_images: bool) -> Task:
    return Task(
        ways=episode.ways,
        support_labels=torch.from_numpy(episode.support_labels),
        support_features=features[torch.from_numpy(episode.support)],
        query_features=features[torch.from_numpy(episode.query)],
        support_images=images_as_float(images, episode.support) if with_images else None,
        query_images=images_as_float(images, episode.query) if with_images else None,
    )


def run_fewshot(
    network: nn.Module | None,
    meta: dict,
    images,
    labels,
    *,
    ways: int | str,
    shots: Sequence[int],
    queries: int,
    episodes: int,
    methods: Sequence[str],
    seed: int,
    finetune_all: bool = False,
    progress: bool = True,
    features: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    domain: str | None = None,
    batch_size: int = 64,
) -> FewShotReport:
    """Few-shot accuracy of each method and shot count over ``episodes`` shared episodes.

    ``images``: uint8 ``[N, 3, S, S]`` (array, memmap or tensor), needed to embed and by the
    methods that adapt the backbone. ``features``: precomputed ``[N, D]`` features to skip the
    embedding (then ``network``/``images`` are only needed by those methods).
    """
    check_episodes(episodes)
    shots = parse_shots(shots)
    labels = np.asarray(labels)
    chosen = build_methods(methods, network, meta, finetune_all)
    samplers = build_samplers(labels, ways, shots, queries, seed, class_names, domain)
    with_images = any(m.needs_images for m in chosen)
    if with_images and images is None:
        raise ConfigError("methods that adapt the backbone need the images", "pass images, or use prototype/linear/finetune")
    if features is None:
        if network is None or images is None:
            raise ConfigError("few-shot evaluation needs either cached features or a network and images", "pass both")
        features = embed_images(network.featurizer, images, batch_size=batch_size, progress=progress)
    if len(features) != len(labels):
        raise ConfigError(f"{len(features)} feature rows for {len(labels)} labels", "embed the same images the labels describe")

    records: list[EpisodeRecord] = []
    with progress_bar("few-shot episodes", len(shots) * episodes, progress) as advance, torch_threads(1):
        for k in shots:
            for episode in samplers[k].episodes(episodes):
                records.extend(_run_episode(chosen, k, episode, _task(episode, features, images, with_images)))
                advance(1)
    ways_used = next(iter(samplers.values())).ways
    return FewShotReport(_summarise(records, [m.label for m in chosen], ways_used, queries), records, ways_used, queries, seed)


def _run_episode(methods: Sequence[FewShotMethod], shots: int, episode: Episode, task: Task) -> list[EpisodeRecord]:
    query_labels = torch.from_numpy(episode.query_labels)
    classes = " ".join(str(int(c)) for c in episode.classes)
    out = []
    for method in methods:
        start = time.perf_counter()
        predicted = method.predict(task)
        elapsed = time.perf_counter() - start
        accuracy = float((predicted == query_labels).float().mean())
        out.append(EpisodeRecord(method.label, shots, episode.index, accuracy, elapsed, classes))
    return out


def _summarise(records: Sequence[EpisodeRecord], order: Sequence[str], ways: int, queries: int) -> list[FewShotResult]:
    """One result per (method, shots): rows sorted by shots, then methods in the order given."""
    groups: dict[tuple[int, str], list[EpisodeRecord]] = {}
    for record in records:
        groups.setdefault((record.shots, record.method), []).append(record)
    results = []
    for (shots, method), rows in sorted(groups.items(), key=lambda item: (item[0][0], order.index(item[0][1]))):
        accs = [r.accuracy for r in rows]
        results.append(FewShotResult(
            method=method, shots=shots, ways=ways, queries=queries, accuracy=float(np.mean(accs)),
            ci95=confidence95(accs), episodes=len(rows), seconds_per_episode=sum(r.seconds for r in rows) / len(rows),
        ))
    return results
