"""Per-run figures logged as MLflow artifacts (``plots/*.png``).

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot:
no global backend switch, no figure registry to leak, safe from worker processes. Each
function writes one PNG and returns its path. Accuracies are fractions in [0, 1] and are
shown as percentages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

TARGET_COLOUR = "#d62728"
SOURCE_COLOUR = "#1f77b4"


def _figure(width: float, height: float, ncols: int = 1):
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_domain_accuracy(per_domain: dict[str, float], target: str, path: str | Path) -> Path:
    """Accuracy of the selected checkpoint on every domain; the held-out target in red."""
    domains = list(per_domain)
    values = [100.0 * float(per_domain[d]) for d in domains]
    fig, (ax,) = _figure(max(4.0, 1.2 * len(domains) + 1), 3.5)
    colours = [TARGET_COLOUR if d == target else SOURCE_COLOUR for d in domains]
    bars = ax.bar(domains, values, color=colours)
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"selected checkpoint, target = {target} (red)")
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, path)


def plot_training_curves(history: dict[str, list[tuple[int, float]]], path: str | Path) -> Path:
    """Losses on the left, accuracies (any series whose name contains "acc") on the right."""
    accuracy = {k: v for k, v in history.items() if "acc" in k and v}
    losses = {k: v for k, v in history.items() if "acc" not in k and v}
    panels = [(title, series) for title, series in (("training terms", losses), ("accuracy", accuracy)) if series]
    if not panels:
        panels = [("no data", {})]
    fig, axes = _figure(6.0 * len(panels), 3.8, ncols=len(panels))
    for ax, (title, series) in zip(axes, panels):
        for name, points in sorted(series.items()):
            steps, values = zip(*sorted(points))
            scale = 100.0 if title == "accuracy" else 1.0
            ax.plot(steps, [scale * v for v in values], label=name, marker="o" if len(steps) < 20 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        if title == "accuracy":
            ax.set_ylabel("%")
        if series:
            ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix (colour) with raw counts written in each cell."""
    from sklearn.metrics import confusion_matrix

    n = len(class_names)
    counts = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=list(range(n)))
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    size = max(4.0, 0.6 * n + 2)
    fig, (ax,) = _figure(size, size)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_title(f"accuracy {100.0 * np.trace(counts) / max(1, counts.sum()):.1f}%")
    return _save(fig, path)


TSNE_MIN_POINTS = 4


def subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Indices of at most ``max_points`` of ``n`` items, chosen reproducibly."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def embed_tsne(features: np.ndarray, seed: int = 0, max_iter: int = 500) -> np.ndarray:
    """2-D t-SNE embedding of ``features`` [N, D] (perplexity capped for small N).

    One OpenMP thread: on a shared or busy CPU, Barnes-Hut's spinning worker threads made it
    ~7x slower (600 points: 21 s against 3 s); 500 iterations suffice for a diagnostic plot.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    if n < TSNE_MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {TSNE_MIN_POINTS} points, got {n}")
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    with threadpool_limits(limits=1):
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max_iter)
        return tsne.fit_transform(features)


def plot_tsne(
    features: np.ndarray,
    domain_ids: Sequence[int],
    labels: Sequence[int],
    domain_names: Sequence[str],
    class_names: Sequence[str] | None,
    path: str | Path,
    seed: int = 0,
    max_points: int = 2000,
) -> Path:
    """t-SNE of the features, coloured by domain (left) and by class (right)."""
    keep = subsample(len(features), max_points, seed)
    if class_names is None:
        class_names = [f"class {i}" for i in range(int(np.max(labels)) + 1)] if len(labels) else []
    if len(keep) < TSNE_MIN_POINTS:  # a tiny domain must not fail the run after training: say why there is no embedding
        fig, (ax,) = _figure(6.0, 3.0)
        ax.text(0.5, 0.5, f"t-SNE needs at least {TSNE_MIN_POINTS} points, got {len(keep)}", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    embedding = embed_tsne(np.asarray(features)[keep], seed=seed)
    domain_ids = np.asarray(domain_ids)[keep]
    labels = np.asarray(labels)[keep]
    fig, (by_domain, by_class) = _figure(12.0, 5.5, ncols=2)
    for ax, ids, names, title in ((by_domain, domain_ids, domain_names, "by domain"), (by_class, labels, class_names, "by class")):
        cmap = _categorical_colours(len(names))
        for index, name in enumerate(names):
            mask = ids == index
            if mask.any():
                ax.scatter(embedding[mask, 0], embedding[mask, 1], s=6, color=cmap[index], label=name, alpha=0.8)
        ax.set_title(f"t-SNE {title} ({len(keep)} points)")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2, loc="best")
    return _save(fig, path)


def _categorical_colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
