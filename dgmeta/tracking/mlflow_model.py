"""A trained network as an MLflow model, so plain MLflow loads and serves it.

The run's ``model/`` artifact folder is one MLflow model (``MLmodel``, pytorch + python_function
flavors, signature, input example) that also holds dgmeta's own ``network.pt``::

    model/MLmodel, model/data/model.pt2, model/input_example.json, ..., model/network.pt

so ``runs:/<run>/model`` and every registered version work with ``mlflow.pytorch.load_model``,
``mlflow.pyfunc.load_model`` and ``mlflow models serve``, while dgmeta's tools keep reading
``model/network.pt``.

What MLflow serves is :class:`ImageClassifier`: uint8 RGB images, NCHW, at the run's test
resolution (what the run evaluated on) -> class probabilities in the order of ``classes`` in the
model's metadata. Scaling to [0, 1] happens here and the backbone's mean/std normalisation inside
the network, so a client sends raw pixels.

It is saved in MLflow's ``pt2`` format (``torch.export``): loading needs torch only, neither
dgmeta nor timm, and no pickle. The export holds its own copy of the weights, so the folder
stores them twice (``network.pt`` stays self-contained because dgmeta's loaders download that
one file); the model is logged once per run and registration points at it, never re-uploads it.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

MODEL_ARTIFACT = "model"
NETWORK_FILE = "network.pt"
#: MLflow's dynamic batch dimension needs an example batch larger than one (torch.export
#: specialises size-1 dimensions)
EXAMPLE_IMAGES = 2


class ImageClassifier(nn.Module):
    """Images as the run saw them -> class probabilities.

    ``images``: ``[N, 3, S, S]`` RGB, uint8 in 0..255 or float in [0, 1] (the exported MLflow
    model takes uint8 only: an export fixes the input dtype).
    """

    def __init__(self, network: nn.Module, image_size: int):
        super().__init__()
        self.network = network
        self.image_size = int(image_size)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != self.image_size or images.shape[3] != self.image_size:
            raise ValueError(f"expected RGB images [N, 3, {self.image_size}, {self.image_size}], got {list(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return torch.softmax(self.network(x), dim=1)


def served_module(network: nn.Module, image_size: int) -> ImageClassifier:
    """A frozen CPU copy of ``network`` wrapped for serving; the training copy is left untouched."""
    frozen = copy.deepcopy(network).cpu().float().eval().requires_grad_(False)
    featurizer = getattr(frozen, "featurizer", None)
    if featurizer is not None and getattr(featurizer, "channels_last", False):
        # channels_last changes memory layout only; plain layout keeps the export's weights contiguous
        featurizer.channels_last = False
        frozen = frozen.to(memory_format=torch.contiguous_format)
    return ImageClassifier(frozen, image_size).eval()


def _example_batch(images, image_size: int) -> np.ndarray:
    """``EXAMPLE_IMAGES`` real images of the run (uint8 NCHW), repeated when there are fewer."""
    if images is not None and len(images) > 0:
        batch = np.array(images[:EXAMPLE_IMAGES], dtype=np.uint8)  # a writable copy, not a read-only memmap view
    else:
        batch = np.full((1, 3, image_size, image_size), 128, dtype=np.uint8)
    while len(batch) < EXAMPLE_IMAGES:
        batch = np.concatenate([batch, batch])[:EXAMPLE_IMAGES]
    return np.ascontiguousarray(batch)


def pip_requirements() -> list[str]:
    """What a serving environment needs for a pt2 model: torch (the export's graph) and MLflow."""
    import mlflow

    torch_version = torch.__version__.split("+", 1)[0]  # a local tag such as +cu130 is no PyPI version
    return [f"torch=={torch_version}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]


def save_mlflow_model(path: str | Path, network: nn.Module, meta: dict, example_images=None) -> Path:
    """Write ``network`` as an MLflow model folder at ``path`` (which must not exist yet)."""
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    image_size = int(meta["image_size"])
    classes = [str(c) for c in meta.get("classes", [])]
    module = served_module(network, image_size)
    example = _example_batch(example_images, image_size)
    with torch.no_grad():
        num_classes = module(torch.from_numpy(example)).shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 3, image_size, image_size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )
    metadata = {
        "input": f"uint8 RGB images, NCHW, {image_size}x{image_size} pixels (the run's test resolution)",
        "output": "class probabilities, columns in the order of `classes`",
        "classes": classes,
        "image_size": image_size,
        **{key: meta[key] for key in ("dataset", "target", "seed", "backbone", "base", "meta_mode", "protocol") if key in meta},
    }
    path = Path(path)
    mlflow.pytorch.save_model(
        module, str(path), signature=signature, input_example=example, serialization_format="pt2",
        pip_requirements=pip_requirements(),  # explicit: inferring them would load the model again in a subprocess
        metadata=metadata,
    )
    _shrink_examples(path)
    return path


def _shrink_examples(path: Path) -> None:
    """Keep one image, compactly written, in the saved examples: MLflow indents every pixel of
    the serving example (about 5 MB for two 224-pixel images, a third of the weights), and the
    examples only show a client what to send."""
    for name, wrap in (("input_example.json", False), ("serving_input_example.json", True)):
        file = path / name
        if not file.is_file():
            continue
        data = json.loads(file.read_text())
        images = data["inputs"] if wrap else data
        shrunk = {"inputs": images[:1]} if wrap else images[:1]
        file.write_text(json.dumps(shrunk, separators=(",", ":")))


def log_network_model(run, network_path: Path, network: nn.Module, meta: dict, example_images=None) -> Path:
    """Log ``model/`` of a finished run: the MLflow model with ``network.pt`` inside it.

    An export failure (a backbone torch.export cannot trace) costs only the MLflow model: the
    run still gets ``model/network.pt``, and the tag ``dgmeta.mlflow_model_error`` says why.
    Returns where ``network.pt`` now is.
    """
    network_path = Path(network_path)
    folder = Path(tempfile.mkdtemp(prefix="dgmeta-mlflow-model-")) / MODEL_ARTIFACT
    try:
        save_mlflow_model(folder, network, meta, example_images)
    except Exception as exc:  # noqa: BLE001 - the run's results must survive any export problem
        shutil.rmtree(folder.parent, ignore_errors=True)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        print(f"warning: no MLflow model for run {run.run_id} ({reason}); model/{NETWORK_FILE} is logged", file=sys.stderr)
        run.set_tags({"dgmeta.mlflow_model_error": reason})
        run.log_artifact(network_path, MODEL_ARTIFACT)
        return network_path
    moved = folder / NETWORK_FILE
    shutil.move(str(network_path), moved)
    run.log_artifacts(folder, MODEL_ARTIFACT)
    return moved
