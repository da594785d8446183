"""Pipeline specs: the shipped files, the schema's one-line errors, and CLI / --set precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgmeta.errors import ConfigError
from dgmeta.hparams import default_hparams
from dgmeta.orchestration.spec import load_pipeline

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
SHIPPED = ["pacs_erm.yaml", "pacs_dann_init.yaml", "pacs_fewshot.yaml", "pacs_retrain_weekly.yaml", "pacs_mini_smoke.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_pipelines_resolve(name):
    spec = load_pipeline(PIPELINES / name)
    config = spec.to_run_config()
    assert config.dataset.startswith("pacs") and config.seeds
    defaults = default_hparams(config.base, config.meta)
    for key, value in config.hparams.items():
        assert type(value) is type(defaults[key]), key  # parsed to the default's type
    if "register" in spec.stages:
        assert spec.register.model_name


def test_shipped_specs_say_what_they_promise():
    smoke = load_pipeline(PIPELINES / "pacs_mini_smoke.yaml").to_run_config()
    assert (smoke.dataset, smoke.backbone, smoke.weights, smoke.image_size) == ("pacs-mini", "test_resnet", "none", 32)
    assert smoke.steps <= 10
    weekly = load_pipeline(PIPELINES / "pacs_retrain_weekly.yaml")
    assert weekly.schedule.cron == "0 3 * * 0" and weekly.register is not None
    fewshot = load_pipeline(PIPELINES / "pacs_fewshot.yaml")
    assert "fewshot" in fewshot.stages and fewshot.to_run_config().fewshot["shots"] == [1, 5]
    dann = load_pipeline(PIPELINES / "pacs_dann_init.yaml").to_run_config()
    assert (dann.base, dann.meta, dann.protocol) == ("dann", "init", "msda")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_cli_options_override_the_file_and_set_overrides_hparams(tmp_path):
    path = write(tmp_path, "dataset: pacs\nsteps: 50\nseeds: [0, 1]\nhparams: {lr: 1, dropout: 0.1}\ntargets: photo\n")
    spec = load_pipeline(path)
    config = spec.to_run_config({"steps": 7, "base": None, "seeds": [4]}, ["dropout=0.5", "weight_decay=0.001"])
    assert config.steps == 7 and config.seeds == [4] and config.base == "erm"  # None: not given on the CLI
    assert config.targets == ["photo"]  # a scalar is a one-item list
    assert config.hparams == {"lr": 1.0, "dropout": 0.5, "weight_decay": 0.001}
    assert isinstance(config.hparams["lr"], float)
    # `lr: 1` and `lr: 1.0` are the same experiment, so they hash the same; a real change does not
    same = load_pipeline(write(tmp_path, "dataset: pacs\nsteps: 50\nseeds: [0, 1]\nhparams: {lr: 1.0, dropout: 0.1}\ntargets: photo\n"))
    assert same.to_run_config({"steps": 7, "seeds": [4]}, ["dropout=0.5", "weight_decay=0.001"]).config_hash() == config.config_hash()
    assert spec.to_run_config({"steps": 7, "seeds": [4]}, ["dropout=0.0", "weight_decay=0.001"]).config_hash() != config.config_hash()


def test_memory_mode_in_a_spec_and_on_the_cli(tmp_path):
    spec = load_pipeline(write(tmp_path, "dataset: pacs\nmemory: fast\n"))
    assert spec.to_run_config().memory == "fast"
    assert spec.to_run_config({"memory": "lean"}).memory == "lean"
    assert load_pipeline(write(tmp_path, "dataset: pacs\n")).to_run_config().memory == "lean"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("dataset: pacs\nstepz: 5\n", r"spec.yaml: unknown key 'stepz' — did you mean 'steps'\?"),
        ("dataset: pacs\nsteps: many\n", r"key 'steps': Input should be a valid integer.*'many'"),
        ("dataset: pacs\nsteps: 0\n", r"key 'steps': Input should be greater than 0"),
        ("base: erm\n", r"missing required key 'dataset'"),
        ("dataset: pacs\n  base: [erm\n", r"malformed YAML at line \d"),
        ("- dataset\n- pacs\n", r"must be a mapping of keys, got a list"),
        ("", r"is empty"),
        ("dataset: pacs\nprotocol: uda\n", r"key 'protocol': Input should be 'dg', 'msda' or 'ssda'"),
        ("dataset: pacs\nmemory: max\n", r"key 'memory': Input should be 'lean' or 'fast'"),
        ("dataset: pacs\nstages: [train, deploy]\n", r"key 'stages.1'"),
        ("dataset: pacs\nstages: [train, register]\n", r"stage 'register' needs a register: section"),
        ("dataset: pacs\nregister: {model_name: m, margn: 1}\n", r"unknown key 'register.margn' — did you mean 'margin'\?"),
        ("dataset: pacs\nregister: {model_name: m, margin: -1}\n", r"key 'register.margin'"),
        ("dataset: pacs\nschedule: {cron: '0 3 * *'}\n", r"key 'schedule.cron'.*has 4 fields, expected 5"),
        ("dataset: pacs\nfewshot: {ways: 1}\n", r"key 'fewshot.ways'"),
        ("dataset: pacs\nhparams: {lr: [1, 2]}\n", r"hparams.lr must be a number, string or boolean"),
    ],
)
def test_invalid_specs_fail_with_one_line_naming_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_pipeline(path)
    assert "\n" not in str(info.value)


def test_hparams_are_checked_against_base_and_meta(tmp_path):
    spec = load_pipeline(write(tmp_path, "dataset: pacs\nbase: erm\nhparams: {lambda_max: 2.0}\n"))
    with pytest.raises(ConfigError, match=r"spec.yaml: hparams: unknown hyperparameter 'lambda_max'"):
        spec.to_run_config()
    spec = load_pipeline(write(tmp_path, "dataset: pacs\nbase: dann\nhparams: {lambda_max: fast}\n"))
    with pytest.raises(ConfigError, match=r"expected float"):
        spec.to_run_config()
    spec = load_pipeline(write(tmp_path, "dataset: pacs\nbase: dann\n"))
    assert spec.to_run_config({}, ["lambda_max=2"]).hparams == {"lambda_max": 2.0}
    with pytest.raises(ConfigError, match="unknown hyperparameter 'nosuch'"):
        spec.to_run_config({}, ["nosuch=1"])
    with pytest.raises(ConfigError, match="unknown config key 'colour'"):
        spec.to_run_config({"colour": "red"})


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline(tmp_path / "nope.yaml")
