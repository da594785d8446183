"""Few-shot methods, looked up by name in :data:`FEWSHOT_METHODS`.

Each method gets one :class:`Task` per episode and returns its query predictions. The cached
features are always filled in; the images only when the method says ``needs_images``.

* ``prototype``: class means of L2-normalised features, nearest by cosine similarity.
* ``linear``: scikit-learn logistic regression on the frozen (normalised) features.
* ``finetune``: a new linear head trained by gradient steps on the frozen features; with
  ``finetune_all`` that head is then fine-tuned together with every backbone layer on the
  support images (linear probing then fine-tuning, which distorts pretrained features less
  than fine-tuning from a random head; Kumar et al., 2022).
* ``maml``: Proto-MAML: a few SGD steps on every parameter from the meta-learned
  initialisation, starting from a head built from the class prototypes. Only meaningful for
  networks trained with a meta mode containing ``init``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmeta.device import module_device
from dgmeta.errors import ConfigError
from dgmeta.evaluation.fewshot import adapt
from dgmeta.registry import Registry


@dataclass
class Task:
    """One episode as the methods see it (labels are episode-local, ``0..ways-1``)."""

    ways: int
    support_labels: Tensor
    support_features: Tensor
    query_features: Tensor
    support_images: Tensor | None = None  # float in [0, 1], NCHW; only for ``needs_images``
    query_images: Tensor | None = None


class FewShotMethod:
    name: ClassVar[str] = "base"

    def __init__(self, network: nn.Module | None, meta: dict, *, finetune_all: bool = False):
        self.network = network
        self.meta = dict(meta or {})

    @property
    def needs_images(self) -> bool:
        return False

    @property
    def label(self) -> str:
        """Name in reports and metric keys."""
        return self.name

    def predict(self, task: Task) -> Tensor:
        raise NotImplementedError

    def _featurizer(self) -> nn.Module:
        if self.network is None:
            raise ConfigError(f"few-shot method {self.label!r} needs the network, not only cached features", "pass the loaded network")
        return self.network.featurizer


FEWSHOT_METHODS: Registry[type[FewShotMethod]] = Registry("few-shot method")


def create_method(name: str, network: nn.Module | None, meta: dict, *, finetune_all: bool = False) -> FewShotMethod:
    return FEWSHOT_METHODS.get(name)(network, meta, finetune_all=finetune_all)


@FEWSHOT_METHODS.register("prototype")
class Prototype(FewShotMethod):
    name = "prototype"

    def predict(self, task: Task) -> Tensor:
        support = F.normalize(task.support_features, dim=-1)
        centres = F.normalize(adapt.prototypes(support, task.support_labels, task.ways), dim=-1)
        return (F.normalize(task.query_features, dim=-1) @ centres.T).argmax(1)


@FEWSHOT_METHODS.register("linear")
class Linear(FewShotMethod):
    name = "linear"
    C: ClassVar[float] = 1.0

    def __init__(self, network, meta, *, finetune_all: bool = False):
        super().__init__(network, meta)
        import sklearn.linear_model  # noqa: F401  (imported here so episode timings exclude it)
        from threadpoolctl import ThreadpoolController

        # Scanning the loaded BLAS libraries costs ~4 ms, more than a fit: do it once.
        self._threadpools = ThreadpoolController()

    def predict(self, task: Task) -> Tensor:
        from sklearn.linear_model import LogisticRegression

        support = F.normalize(task.support_features, dim=-1).numpy()
        query = F.normalize(task.query_features, dim=-1).numpy()
        # A few dozen rows: BLAS threads only add synchronisation cost (10x slower measured).
        with self._threadpools.limit(limits=1, user_api="blas"):
            model = LogisticRegression(C=self.C, max_iter=1000).fit(support, task.support_labels.numpy())
            predicted = model.predict(query)
        return torch.from_numpy(np.asarray(predicted, dtype=np.int64))


@FEWSHOT_METHODS.register("finetune")
class Finetune(FewShotMethod):
    name = "finetune"
    head_steps: ClassVar[int] = 100
    head_lr: ClassVar[float] = 0.01
    # Whole-network fine-tuning after the linear probe (finetune_all only).
    all_steps: ClassVar[int] = 10
    all_lr: ClassVar[float] = 1e-3
    all_head_lr: ClassVar[float] = 1e-2

    def __init__(self, network, meta, *, finetune_all: bool = False):
        super().__init__(network, meta)
        self.finetune_all = finetune_all
        if finetune_all:
            self._featurizer()

    @property
    def needs_images(self) -> bool:
        return self.finetune_all

    @property
    def label(self) -> str:
        return "finetune-all" if self.finetune_all else "finetune"

    def predict(self, task: Task) -> Tensor:
        head = adapt.fit_linear_head(task.support_features, task.support_labels, task.ways, self.head_steps, self.head_lr)
        if not self.finetune_all:
            return adapt.normalized_linear_logits(task.query_features, head).argmax(1)
        featurizer = self._featurizer()
        head, support_x, support_y, query_x = on_device_of(featurizer, head, task)
        adapted = adapt.adapt_all_layers(
            featurizer, head, adapt.normalized_linear_logits, support_x, support_y,
            steps=self.all_steps, lr=self.all_lr, head_lr=self.all_head_lr, momentum=0.9,
        )
        return adapt.predict_adapted(featurizer, adapted, adapt.normalized_linear_logits, query_x).cpu()


def on_device_of(featurizer: nn.Module, head: dict[str, Tensor], task: Task):
    """The head, support images and labels and query images where ``featurizer`` computes (the
    cached features and the episode's labels stay on the CPU, where the cheap methods use them)."""
    device = module_device(featurizer)
    return (
        {k: v.to(device) for k, v in head.items()},
        task.support_images.to(device), task.support_labels.to(device), task.query_images.to(device),
    )


def is_init_model(meta: dict) -> bool:
    return "init" in str(meta.get("meta_mode") or "none").split("+")


@FEWSHOT_METHODS.register("maml")
class ProtoMAML(FewShotMethod):
    """Plain SGD from the meta-learned initialisation: the adaptation the init was trained for.

    The step size is the inner-loop ``inner_lr`` the model was meta-trained with when its
    checkpoint records ``hparams`` (the init was trained for exactly that step), else 1e-3:
    full-batch SGD on every layer of ImageNet EfficientNet-Lite0 at 0.01 made the support loss
    oscillate (0.43 -> 1.9) on PACS sketch, at 1e-3 it fell steadily. Test-time inner loops run
    longer than training ones, as in MAML (5 steps at training, 10 at test), hence ``steps`` >= 5.

    The prototype head works on L2-normalised features with a temperature: on raw features its
    logits scale with ``|x|^2`` (~600 for EfficientNet-Lite0), and a single SGD step at
    ``lr=0.01`` (even 0.001) sent the support loss from 1.4 to 244 and the accuracy to chance.

    Every step is checked: one that would raise the support loss is retried at half the step size
    (:func:`adapt.descending_sgd`). Without that check, a DANN + meta-init model (PACS, 96 px, 80
    steps) adapted at its ``inner_lr`` 0.01 ended far *below* the nearest-prototype classifier it
    starts from, on sketch: 5-shot 33.7% against 57.1% for the prototype method
    (``benchmarks/results/accuracy/fewshot_pacs_sketch_96px_unguarded.md``).
    """

    name = "maml"
    temperature: ClassVar[float] = 10.0  # logits within ±4t: a cosine classifier's usual scale
    default_lr: ClassVar[float] = 1e-3
    min_steps: ClassVar[int] = 5
    max_halvings: ClassVar[int] = 6

    def __init__(self, network, meta, *, finetune_all: bool = False):
        super().__init__(network, meta)
        if not is_init_model(self.meta):
            mode = self.meta.get("meta_mode") or "none"
            raise ConfigError(
                f"--method maml needs a meta-learned initialization, but this model was trained with meta mode {mode!r}",
                "train it with `dgmeta run --meta init` or pick another method (prototype, linear, finetune)",
            )
        self._featurizer()
        # the network file's record of its run: files written before a key existed lack it
        trained = {"inner_lr": self.default_lr, "inner_steps": 1, **(self.meta.get("hparams") or {})}
        self.lr = float(trained["inner_lr"])
        self.steps = max(self.min_steps, int(trained["inner_steps"]))

    @property
    def needs_images(self) -> bool:
        return True

    def predict(self, task: Task) -> Tensor:
        featurizer = self._featurizer()
        # Cached features come from the same eval-mode featurizer: the un-adapted support features.
        support = F.normalize(task.support_features, dim=-1)
        head = adapt.proto_head(support, task.support_labels, task.ways, self.temperature)
        head, support_x, support_y, query_x = on_device_of(featurizer, head, task)
        adapted = adapt.adapt_all_layers(
            featurizer, head, adapt.normalized_linear_logits, support_x, support_y,
            steps=self.steps, lr=self.lr, max_halvings=self.max_halvings,
        )
        return adapt.predict_adapted(featurizer, adapted, adapt.normalized_linear_logits, query_x).cpu()


def method_names() -> list[str]:
    return FEWSHOT_METHODS.names()
