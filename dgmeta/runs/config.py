"""The resolved configuration of a `dgmeta run`, and its hash (used to group, resume and skip runs).

One route builds it, whatever the source: :func:`build_run_config` merges a file's keys (a
pipeline spec, or the ``config.json`` a run logged), the CLI options and ``--set``, parses every
hyperparameter override to its declared type and checks it, so equal runs get equal hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dgmeta.device import check_precision, resolve_device
from dgmeta.errors import ConfigError
from dgmeta.training.allocator import check_memory_mode
from dgmeta.training.averaging import check_average

# Fields that do not change what is computed are left out of the hash.
_NOT_HASHED = {"tracking_uri", "experiment", "quiet", "data_root", "cache_dir", "run_name", "targets", "seeds", "fewshot", "resume", "checkpoint_every", "nproc", "cache", "memory", "test_every_eval", "device"}


@dataclass
class RunConfig:
    dataset: str = "pacs"
    base: str = "erm"
    meta: str = "none"
    protocol: str | None = None  # None: the learner's default (dg for erm/jigen, msda for dann/mcd)
    targets: list[str] | None = None  # None: every domain in turn
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = 600
    batch_size: int = 16  # per source domain
    image_size: int = 224  # evaluation (and decoding) size
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "imagenet"
    split: str = "official"
    shots: int = 3  # labelled target images per class under ssda
    eval_every: int = 60
    hparams: dict[str, Any] = field(default_factory=dict)  # overrides of the registry defaults
    data_root: str | None = None
    cache_dir: str | None = None
    experiment: str = "dgmeta"
    tracking_uri: str | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (dgmeta.device)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (dgmeta.device); same numbers up to rounding, so not hashed
    channels_last: bool = True
    deterministic: bool = False
    checkpoint_every: int = 0
    resume: str | None = None
    fewshot: dict[str, Any] | None = None
    nproc: int = 1  # data-parallel processes (dgmeta.training.distributed); batch_size stays per process
    cache: str = "auto"  # decoded images: disk (memmap cache) | stream (decode on the fly) | auto (dgmeta.data.streaming)
    memory: str = "lean"  # lean | fast: what the process does with freed memory (dgmeta.training.allocator)
    train_image_size: int | None = None  # None: 0.8 x image_size (FixRes: train below the test size)
    average: str = "none"  # none | ema | swad: the weights the run reports (swad measured no gain at 600 steps: README)
    test_every_eval: bool = False  # True: evaluate the target at every checkpoint too (logs the oracle; slower)
    run_name: str | None = None
    quiet: bool = False

    def validate(self) -> "RunConfig":
        for name in ("steps", "batch_size", "image_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                flag = name.replace("_", "-")
                raise ConfigError(f"--{flag} must be a positive integer, got {value}", f"pass e.g. --{flag} {RunConfig.__dataclass_fields__[name].default}")
        if self.image_size < 16:
            raise ConfigError(f"--image-size {self.image_size} is too small", "use at least 16 pixels (128 or 224 for real runs)")
        if self.split not in ("official", "random"):
            raise ConfigError(f"unknown --split {self.split!r}", "choose official or random")
        if self.protocol is not None and self.protocol not in ("dg", "msda", "ssda"):
            raise ConfigError(f"unknown --protocol {self.protocol!r}", "choose one of: dg, msda, ssda")
        check_precision(self.precision, resolve_device(self.device), self.meta)
        if not self.seeds:
            raise ConfigError("no --seed given", "pass at least one, e.g. --seed 0")
        self._check_seeds_and_targets()
        if not str(self.experiment).strip():
            raise ConfigError("the --experiment name is empty", "give the MLflow experiment name, e.g. --experiment dgmeta")
        if self.cache not in ("auto", "disk", "stream"):
            raise ConfigError(f"unknown --cache {self.cache!r}", "choose auto, disk or stream")
        check_memory_mode(self.memory)
        check_average(self.average)
        if self.train_image_size is not None and (not isinstance(self.train_image_size, int) or not 16 <= self.train_image_size <= self.image_size):
            raise ConfigError(
                f"--train-image-size {self.train_image_size} must lie in 16..--image-size ({self.image_size})",
                f"pass e.g. --train-image-size {max(16, self.image_size * 3 // 4)}, or leave it out to train at --image-size",
            )
        if not isinstance(self.nproc, int) or self.nproc < 1:
            raise ConfigError(f"--nproc must be a positive integer, got {self.nproc}", "pass e.g. --nproc 2")
        if self.shots <= 0:
            raise ConfigError(f"--shots must be positive, got {self.shots}", "pass e.g. --shots 3")
        return self

    def _check_seeds_and_targets(self) -> None:
        for seed in self.seeds:
            # numpy's and torch's seeding take 0 <= seed < 2**32; anything else crashes inside the job
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
                raise ConfigError(f"--seed {seed} is outside 0..{2**32 - 1}", "pass a non-negative integer below 2**32, e.g. --seed 0")
        # the same (target, seed) twice would train twice and report a spread of 0 over copies
        for flag, values in (("--seed", self.seeds), ("--target", self.targets or [])):
            repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
            if repeated:
                raise ConfigError(f"{flag} {repeated[0]} is given more than once", f"give each {flag} once")

    @property
    def effective_train_size(self) -> int:
        """The training crop size: ``train_image_size``, else 0.8 x ``image_size`` in multiples of 8."""
        if self.train_image_size is not None:
            return self.train_image_size
        return max(16, int(round(self.image_size * 0.8 / 8)) * 8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}", f"known keys: {', '.join(sorted(known))}")
        return cls(**data)

    def config_hash(self, **extra: Any) -> str:
        """Hash of everything that changes the result of one (target, seed) run."""
        payload = {k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED}
        payload.update(extra)
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_hparams(
    base: str, meta: str, pinned: dict[str, Any], set_overrides: list[str], source: Path | None = None
) -> dict[str, Any]:
    """Only the overridden hyperparameters, each parsed to its default's type (so the config hash is stable)."""
    from dgmeta.hparams import apply_overrides, default_hparams

    defaults = default_hparams(base, meta)
    try:
        # str() then parse: a YAML ``lr: 1`` becomes 1.0 like the default, so equal configs hash equally
        resolved = apply_overrides(defaults, {k: v if isinstance(v, bool) else str(v) for k, v in pinned.items()})
    except ConfigError as exc:
        where = f"{source}: hparams: " if source else "hparams: "
        raise ConfigError(where + exc.message, exc.hint) from None
    resolved = apply_overrides(resolved, list(set_overrides))
    keys = set(pinned) | {text.split("=", 1)[0].strip() for text in set_overrides}
    return {key: resolved[key] for key in sorted(keys)}


def build_run_config(
    file_keys: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    set_overrides: list[str] | None = None,
    source: Path | None = None,
) -> RunConfig:
    """The validated :class:`RunConfig`: CLI ``options`` (non-None) beat ``file_keys``, ``--set``
    beats any hyperparameter; ``source`` names the file in error messages."""
    data = dict(file_keys or {})
    data.update({k: v for k, v in (options or {}).items() if v is not None})
    pinned = data.pop("hparams", None) or {}
    config = RunConfig.from_dict(data)
    config.hparams = resolve_hparams(config.base, config.meta, pinned, list(set_overrides or []), source)
    return config.validate()


#: keys ``config.json`` adds to a run's :class:`RunConfig` (see dgmeta.runs.artifacts)
LOGGED_ONLY = ("target", "seed", "hparams_resolved")


def is_logged_config(data: dict[str, Any]) -> bool:
    return "hparams_resolved" in data


def logged_run_keys(data: dict[str, Any]) -> dict[str, Any]:
    """The RunConfig keys of a logged ``config.json``: its one (target, seed) job, under the protocol
    it ran with, never resuming the run that wrote it."""
    keys = {k: v for k, v in data.items() if k not in LOGGED_ONLY}
    keys.update(targets=[data["target"]], seeds=[data["seed"]], resume=None)
    return keys
