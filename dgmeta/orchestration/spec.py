"""Pipeline specs: one YAML file says what to train, how to evaluate it and when to retrain it.

```yaml
name: pacs-erm                 # default: the file name
dataset: pacs                  # required
protocol: dg                   # dg | msda | ssda (default: the learner's)
base: erm
meta: none
backbone: tf_efficientnet_lite0
weights: imagenet
hparams: {lr: 0.005}           # overrides of dgmeta.hparams defaults, checked against them
targets: [photo, sketch]       # default: every domain in turn
seeds: [0, 1, 2]
steps: 300
batch_size: 32
image_size: 128
split: official
experiment: pacs-erm
stages: [train, evaluate, register]
fewshot: {ways: 5, shots: [1, 5], episodes: 20}
register: {model_name: pacs-erm, margin: 0.5}
schedule: {cron: "0 3 * * 0"}
```

Run fields left out fall back to ``RunConfig``'s defaults, so the defaults live in one place.
Every mistake (unknown key, wrong type, missing ``dataset``, malformed YAML) is one
``ConfigError`` line that names the file and the key.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from dgmeta.errors import ConfigError
from dgmeta.runs.config import RunConfig, build_run_config, is_logged_config, logged_run_keys

StageName = Literal["train", "evaluate", "fewshot", "register"]
STAGES: tuple[str, ...] = ("train", "evaluate", "fewshot", "register")


class _Section(BaseModel):
    # strict: a YAML string "5" for an integer is a mistake to report, not to coerce
    model_config = ConfigDict(extra="forbid", strict=True)


class FewshotSpec(_Section):
    """Few-shot episodes on each trained network's target domain (``dgmeta.runs.fewshot_stage``)."""

    ways: int | Literal["all"] = "all"
    shots: list[int] = Field(default_factory=lambda: [1, 5], min_length=1)
    queries: int = Field(15, gt=0, description="query images per class")
    episodes: int = Field(600, gt=0)
    methods: list[str] = Field(default_factory=lambda: ["prototype", "linear"], min_length=1)
    seed: int = 0

    @field_validator("ways")
    @classmethod
    def _enough_ways(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 2:
            raise ValueError("ways must be at least 2 (or 'all')")
        return value

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, value: list[int]) -> list[int]:
        if any(k <= 0 for k in value):
            raise ValueError("shots must be positive integers")
        return value


class RegisterSpec(_Section):
    model_name: str = Field(min_length=1)
    margin: float = Field(0.5, ge=0, description="percentage points of mean test_acc a challenger must gain")


class ScheduleSpec(_Section):
    cron: str

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from dgmeta.orchestration.cron import parse_cron

        try:
            parse_cron(value)
        except ConfigError as exc:  # pydantic reports ValueErrors with the key's location
            raise ValueError(exc.message) from None
        return value


_HPARAM_SCALARS = (bool, int, float, str)


# `register` is also the name of ABCMeta.register on the model *class*; instances read the field
# normally, so pydantic's shadowing warning is noise here.
warnings.filterwarnings("ignore", message='Field name "register" in "PipelineSpec" shadows', category=UserWarning)


class PipelineSpec(_Section):
    name: str | None = None
    description: str = ""
    dataset: str = Field(min_length=1)
    protocol: Literal["dg", "msda", "ssda"] | None = None
    base: str | None = None
    meta: str | None = None
    backbone: str | None = None
    weights: str | None = None
    hparams: dict[str, Any] = Field(default_factory=dict)
    targets: list[str] | None = Field(None, min_length=1)
    seeds: list[int] | None = Field(None, min_length=1)
    steps: int | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0)
    image_size: int | None = Field(None, ge=16)
    split: Literal["official", "random"] | None = None
    shots: int | None = Field(None, gt=0)
    eval_every: int | None = Field(None, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    device: str | None = None  # auto | cpu | cuda | cuda:N, checked by RunConfig.validate (dgmeta.device)
    memory: Literal["lean", "fast"] | None = None
    train_image_size: int | None = Field(None, ge=16)
    average: Literal["none", "ema", "swad"] | None = None
    test_every_eval: bool | None = None
    experiment: str | None = None
    tracking_uri: str | None = None
    data_root: str | None = None
    cache_dir: str | None = None
    cache: Literal["auto", "disk", "stream"] | None = None
    channels_last: bool | None = None
    deterministic: bool | None = None
    checkpoint_every: int | None = Field(None, ge=0)
    nproc: int | None = Field(None, gt=0)
    resume: str | None = None
    run_name: str | None = None
    quiet: bool | None = None
    stages: list[StageName] = Field(default_factory=lambda: ["train", "evaluate"], min_length=1)
    fewshot: FewshotSpec | None = None
    register: RegisterSpec | None = None
    schedule: ScheduleSpec | None = None

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("targets", "seeds", mode="before")
    @classmethod
    def _scalar_to_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value

    @field_validator("hparams")
    @classmethod
    def _scalar_hparams(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if not isinstance(item, _HPARAM_SCALARS):
                raise ValueError(f"hparams.{key} must be a number, string or boolean")
        return value

    @model_validator(mode="after")
    def _stages_have_sections(self) -> "PipelineSpec":
        if len(set(self.stages)) != len(self.stages):
            raise ValueError("stages lists a stage twice")
        if "register" in self.stages and self.register is None:
            raise ValueError("stage 'register' needs a register: section with model_name")
        return self

    # -- derived -------------------------------------------------------------------------

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def display_name(self) -> str:
        return self.name or (self._source.stem if self._source else self.dataset)

    def to_run_config(
        self, cli_overrides: dict[str, Any] | None = None, set_overrides: list[str] | None = None
    ) -> RunConfig:
        """The resolved ``RunConfig``: CLI options (non-None) beat the file, ``--set`` beats any hyperparameter."""
        data: dict[str, Any] = {
            key: getattr(self, key) for key in _RUN_FIELDS if getattr(self, key) is not None
        }
        data["hparams"] = dict(self.hparams)
        if self.fewshot is not None:
            data["fewshot"] = self.fewshot.model_dump()
        return build_run_config(data, cli_overrides, set_overrides, self.source)


# Spec keys copied verbatim into RunConfig (everything except the pipeline-only sections).
_RUN_FIELDS = tuple(
    name for name in PipelineSpec.model_fields if name not in ("name", "description", "hparams", "stages", "fewshot", "register", "schedule")
)
_SECTIONS: dict[str, type[BaseModel]] = {"fewshot": FewshotSpec, "register": RegisterSpec, "schedule": ScheduleSpec}


def load_pipeline(path: str | Path) -> PipelineSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file {path} does not exist", "give a YAML spec such as pipelines/pacs_erm.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}: malformed YAML{where} ({problem})", "fix the YAML syntax (indentation, colons, quotes)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline file {path} ({exc})", "check the path and its permissions") from None
    if data is None:
        raise ConfigError(f"{path} is empty", "write at least `dataset: pacs`")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of keys, got a {type(data).__name__}", "write `key: value` lines, e.g. `dataset: pacs`")
    if is_logged_config(data):  # the config.json a run logged: run that job again
        data = logged_run_keys(data)
    return parse_pipeline(data, source=path)


def parse_pipeline(data: dict[str, Any], source: Path | None = None) -> PipelineSpec:
    where = f"{source}: " if source else "pipeline: "
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        message, hint = _describe_error(exc.errors()[0])
        raise ConfigError(where + message, hint) from None
    spec._source = source.resolve() if source else None
    return spec


def _describe_error(error: dict[str, Any]) -> tuple[str, str]:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "spec"
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _SECTIONS.get(loc[0], PipelineSpec) if len(loc) > 1 else PipelineSpec
        known = list(model.model_fields)
        close = difflib.get_close_matches(loc[-1], known, n=1)
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key {key!r}", f"{suggestion}known keys: {', '.join(known)}"
    if kind == "missing":
        return f"missing required key {key!r}", f"add `{loc[-1]}: ...` to the spec"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and kind != "value_error":
        message += f" (got {error['input']!r})"
    label = f"key {key!r}: " if loc else ""
    return label + message, "see the schema in dgmeta/orchestration/spec.py or pipelines/pacs_erm.yaml"


def run_pipeline(spec: PipelineSpec, config: RunConfig, **kwargs: Any) -> dict[str, Any]:
    """See :func:`dgmeta.orchestration.stages.run_pipeline` (re-exported: `dgmeta run --config` imports it from here)."""
    from dgmeta.orchestration.stages import run_pipeline as run_stages

    return run_stages(spec, config, **kwargs)
