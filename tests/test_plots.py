"""Per-run plots: valid PNGs of the right content, and a t-SNE that separates what is separable."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import silhouette_score

from dgmeta.tracking import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=200):
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width >= min_width and image.height >= 150
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # something was drawn, not a blank canvas
    return pixels


def test_domain_accuracy_highlights_the_target(tmp_path):
    path = plots.plot_domain_accuracy({"art": 0.8, "cartoon": 0.7, "photo": 0.9, "sketch": 0.4}, "sketch", tmp_path / "a" / "dom.png")
    pixels = assert_png(path)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 200  # the target's bar


def test_training_curves_and_confusion(tmp_path):
    history = {"train.loss": [(s, 2.0 / (s + 1)) for s in range(30)], "acc.photo.val": [(10, 0.5), (20, 0.7), (30, 0.8)]}
    wide = assert_png(plots.plot_training_curves(history, tmp_path / "curves.png"))
    single = assert_png(plots.plot_training_curves({"train.loss": history["train.loss"]}, tmp_path / "one.png"))
    assert wide.shape[1] > single.shape[1]  # losses and accuracies get a panel each
    assert_png(plots.plot_training_curves({}, tmp_path / "empty.png"))
    assert_png(plots.plot_confusion([0, 1, 2, 2, 1], [0, 1, 1, 2, 1], ["dog", "cat", "horse"], tmp_path / "cm.png"))


def clusters(rng, n_per=60, dims=32):
    centres = rng.normal(0, 6, (4, dims))
    features = np.concatenate([c + rng.normal(0, 1, (n_per, dims)) for c in centres])
    return features, np.repeat(np.arange(4), n_per)


def test_tsne_separates_clusters_and_not_noise(tmp_path):
    rng = np.random.default_rng(0)
    features, labels = clusters(rng)
    embedding = plots.embed_tsne(features, seed=0)
    assert embedding.shape == (240, 2)
    assert silhouette_score(embedding, labels) > 0.5
    noise = rng.normal(0, 1, features.shape)
    assert silhouette_score(plots.embed_tsne(noise, seed=0), labels) < 0.1  # no structure, no separation
    assert np.allclose(plots.embed_tsne(features, seed=0), embedding)  # seeded


def test_tsne_plot_two_panels_subsampled(tmp_path):
    rng = np.random.default_rng(1)
    features, labels = clusters(rng, n_per=40)
    domains = rng.integers(0, 3, len(labels))
    path = plots.plot_tsne(features, domains, labels, ["art", "photo", "sketch"], ["a", "b", "c", "d"], tmp_path / "tsne.png", max_points=100)
    pixels = assert_png(path, min_width=800)
    assert pixels.shape[1] > 2 * pixels.shape[0]  # side by side
    assert plots.subsample(1000, 100, seed=3).tolist() == plots.subsample(1000, 100, seed=3).tolist()
    assert len(np.unique(plots.subsample(1000, 100, seed=3))) == 100
    # class names are optional (named "class i")
    assert_png(plots.plot_tsne(features, domains, labels, ["art", "photo", "sketch"], None, tmp_path / "nonames.png", max_points=60))
    with pytest.raises(ValueError, match="at least 4 points"):
        plots.embed_tsne(features[:3])


def test_tsne_plot_of_too_few_points_is_a_note_not_a_crash(tmp_path):
    """A tiny source domain must not fail a run after training in its diagnostic plot."""
    from PIL import Image

    from dgmeta.tracking.plots import plot_tsne

    for n in (0, 1, 3):
        path = plot_tsne(np.zeros((n, 5)), [0] * n, [0] * n, ["d0"], ["a"], tmp_path / f"tsne{n}.png")
        assert Image.open(path).size == (600, 300)
