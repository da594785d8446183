"""head_init=probe: the classifier starts as the logistic regression of the frozen features."""

import numpy as np
import pytest
import torch
from torch import nn

from dgmeta.training.data import DomainArrays
from dgmeta.training.head_init import fit_probe_head, init_head_from_probe


def blobs(n_per_class, num_classes, dim, rng, shift=3.0):
    centres = rng.normal(size=(num_classes, dim)) * shift
    labels = np.repeat(np.arange(num_classes), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


@pytest.mark.parametrize("num_classes", [2, 4])
def test_folded_head_reproduces_the_probe_on_raw_features(num_classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x, y = blobs(40, num_classes, 6, rng)
    x = x * 50 + 7  # far from standardised: the folding has to undo it
    head = nn.Linear(6, num_classes)
    train_acc = fit_probe_head(head, x, y, C=0.1)
    mean, std = x.mean(0), x.std(0) + 1e-6
    probe = LogisticRegression(C=0.1, max_iter=1000).fit((x - mean) / std, y)
    expected = probe.predict_proba((x - mean) / std)
    with torch.no_grad():
        got = torch.softmax(head(torch.as_tensor(x, dtype=torch.float32)), 1).double().numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert train_acc == pytest.approx(probe.score((x - mean) / std, y)) and train_acc > 0.9


def test_a_class_missing_from_the_sources_is_never_predicted():
    rng = np.random.default_rng(1)
    x, y = blobs(30, 3, 5, rng)
    head = nn.Linear(5, 4)  # class 3 has no source image
    fit_probe_head(head, x, y, C=1.0)
    with torch.no_grad():
        assert (head(torch.as_tensor(x, dtype=torch.float32)).argmax(1) != 3).all()


class MeanColour(nn.Module):
    """A featurizer whose features are the per-channel means (a frozen, fixed representation)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_network_head_fitted_on_source_images_classifies_unseen_ones():
    rng = np.random.default_rng(2)

    def domain(n):  # the class is the brightest channel
        labels = rng.integers(0, 3, n)
        images = rng.integers(0, 90, size=(n, 3, 16, 16), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, c] += 120
        return DomainArrays(images, labels)

    network = nn.Module()
    network.featurizer, network.classifier = MeanColour(), nn.Linear(3, 3)
    before = network.classifier.weight.clone()
    init_head_from_probe(network, [domain(60), domain(60)], size=8, C=1.0)
    assert not torch.equal(before, network.classifier.weight)
    test = domain(90)
    with torch.no_grad():
        logits = network.classifier(network.featurizer(torch.from_numpy(test.images).float() / 255))
    assert (logits.argmax(1).numpy() == test.labels).mean() > 0.95


def test_frozen_features_of_read_only_images_hand_torch_a_writable_copy(monkeypatch):
    """The decoded-image cache is a read-only memory map; torch warns (once per process) when given a
    read-only array, so the check is on what reaches ``torch.from_numpy``."""
    from dgmeta.training import head_init

    images = np.random.default_rng(0).integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8)
    read_only = images.copy()
    read_only.flags.writeable = False
    handed = []
    from_numpy = torch.from_numpy
    monkeypatch.setattr(head_init.torch, "from_numpy", lambda a: handed.append(a.flags.writeable) or from_numpy(a))
    featurizer = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    features = head_init.frozen_features(featurizer, read_only, size=8, batch=2)
    assert handed == [True, True, True]
    assert np.allclose(features, head_init.frozen_features(featurizer, images, size=8, batch=2))
    assert not np.allclose(features, 0)
