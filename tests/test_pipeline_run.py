"""run_pipeline: stages in order, the evaluate summary, registering, and reusing finished runs."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from dgmeta.errors import ConfigError
from dgmeta.orchestration.spec import load_pipeline, run_pipeline
from tests.fake_runs import _template_store, fake_accuracy, fake_train, store  # noqa: F401 (fixtures)

SPEC = """
dataset: toy
base: erm
targets: [d0, d1]
seeds: [0, 1]
steps: 5
experiment: pipe
hparams: {lr: 0.01}
stages: [register, evaluate, train]   # run in pipeline order whatever the order written
register: {model_name: toy-model, margin: 0.5}
"""


def spec_at(tmp_path, text=SPEC):
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return load_pipeline(path)


def test_train_evaluate_register(tmp_path, store):
    spec = spec_at(tmp_path)
    config = spec.to_run_config()
    lines: list[str] = []
    out = run_pipeline(spec, config, train_fn=fake_train, echo=lines.append)
    assert out["stages"] == ["train", "evaluate", "register"]
    result = out["train"]
    assert len(result.runs) == 4

    summary = out["evaluate"]
    expected = {t: 100 * sum(fake_accuracy(config, t, s) for s in (0, 1)) / 2 for t in ("d0", "d1")}
    assert summary["per_target"] == pytest.approx(expected)
    assert summary["mean"] == pytest.approx(sum(expected.values()) / 2) and summary["n"] == 2
    assert not math.isnan(summary["ci95"])
    client = MlflowClient(tracking_uri=store)
    summary_md = client.download_artifacts(result.parent_run_id, "evaluation/summary.md", str(tmp_path))
    assert "| toy | erm | none | dg |" in open(summary_md).read()

    decision = out["register"]
    assert decision.promoted and decision.version == "1"
    champion = client.get_model_version_by_alias("toy-model", "champion")
    assert str(champion.version) == "1" and float(champion.tags["test_acc"]) == pytest.approx(summary["mean"] / 100)
    assert champion.tags["run_ids"].split(",") == sorted(r.run_id for r in result.runs)
    assert any(line.startswith("register: promoted: no champion yet") for line in lines)


def test_evaluate_and_register_reuse_finished_runs_without_training(tmp_path, store):
    spec = spec_at(tmp_path)
    config = spec.to_run_config()
    first = run_pipeline(spec, config, train_fn=fake_train, stages=["train"], echo=lambda _: None)

    def must_not_train(_config):
        raise AssertionError("train stage was not requested")

    out = run_pipeline(spec, config, train_fn=must_not_train, stages=["evaluate", "register"], echo=lambda _: None)
    assert out["evaluate"]["per_target"].keys() == {"d0", "d1"}
    decision = out["register"]
    assert decision.promoted  # first registration of this model
    version = MlflowClient(tracking_uri=store).get_model_version("toy-model", decision.version)
    assert set(version.tags["run_ids"].split(",")) == {r.run_id for r in first["train"].runs}

    # a changed hyperparameter is another config: its runs do not exist yet
    other = spec.to_run_config({}, ["lr=0.02"])
    with pytest.raises(ConfigError, match="no finished runs of this config"):
        run_pipeline(spec, other, train_fn=must_not_train, stages=["evaluate"], echo=lambda _: None)


def test_fewshot_stage_without_training_is_skipped_with_a_message(tmp_path, store):
    spec = spec_at(tmp_path, SPEC.replace("stages: [register, evaluate, train]", "stages: [fewshot]"))
    lines: list[str] = []
    out = run_pipeline(spec, spec.to_run_config(), train_fn=fake_train, echo=lines.append)
    assert out["fewshot"] is None and lines == ["fewshot: skipped — it needs the networks of the train stage in the same pipeline run"]


def test_unknown_stage_is_refused(tmp_path, store):
    spec = spec_at(tmp_path)
    with pytest.raises(ConfigError, match="unknown stage 'deploy'"):
        run_pipeline(spec, spec.to_run_config(), train_fn=fake_train, stages=["deploy"])
