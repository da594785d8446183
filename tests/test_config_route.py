"""One configuration route: CLI options, --set, a pipeline YAML and the config.json a run logged all
build the same typed RunConfig with the same config_hash, and the logged config re-runs the job."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from dgmeta.cli.main import main
from dgmeta.orchestration.spec import load_pipeline
from dgmeta.runs.config import build_run_config

TINY = ["--backbone", "test_resnet", "--weights", "none", "--image-size", "32", "--batch-size", "4", "--steps", "3", "--eval-every", "3", "--quiet"]


def captured_cli_config(monkeypatch, argv: list[str]):
    """The RunConfig `dgmeta run ARGV` would train, without training it."""
    import dgmeta.runs.experiment as experiment
    import dgmeta.runs.plan as plan

    seen = []
    monkeypatch.setattr(plan, "resolve_plan", lambda config: seen.append(config))
    monkeypatch.setattr(experiment, "run_experiment", lambda config, plan=None: None)
    main(["run", *argv])
    (config,) = seen
    return config


def test_cli_set_and_pipeline_yaml_build_the_same_typed_config(monkeypatch, tmp_path):
    cli = captured_cli_config(monkeypatch, ["pacs-mini", "--base", "dann", "--steps", "7", "--set", "lr=1", "--set", "disc_hidden=64", "--set", "freeze_bn=false"])
    assert cli.hparams == {"disc_hidden": 64, "freeze_bn": False, "lr": 1.0}
    assert isinstance(cli.hparams["lr"], float)  # typed as declared, not the string "1"

    spec = tmp_path / "spec.yaml"
    spec.write_text("dataset: pacs-mini\nbase: dann\nsteps: 7\nhparams: {lr: 1, disc_hidden: 64, freeze_bn: false}\n")
    from_yaml = load_pipeline(spec).to_run_config()
    direct = build_run_config(None, {"dataset": "pacs-mini", "base": "dann", "steps": 7}, ["lr=1.0", "disc_hidden=64", "freeze_bn=0"])
    assert cli == from_yaml == direct
    assert cli.config_hash(protocol="msda") == from_yaml.config_hash(protocol="msda") == direct.config_hash(protocol="msda")


def test_a_wrong_set_value_is_refused_on_the_cli_as_in_a_spec(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        captured_cli_config(monkeypatch, ["pacs-mini", "--set", "lr=fast"])
    assert "--set lr=fast: expected float" in capsys.readouterr().err


def _children(client: MlflowClient, experiment: str) -> list:
    (exp,) = [e for e in client.search_experiments() if e.name == experiment]
    runs = client.search_runs([exp.experiment_id], "tags.`dgmeta.role` = 'child'", order_by=["attributes.start_time ASC"])
    assert all(r.info.status == "FINISHED" for r in runs)
    return runs


def test_the_logged_config_json_reruns_to_the_same_hash_and_accuracy(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    common = ["--tracking-uri", uri, "--experiment", "route"]
    main(["run", "pacs-mini", "--target", "sketch", "--seed", "1", "--set", "lr=0.001", *TINY, *common])
    client = MlflowClient(tracking_uri=uri)
    (first,) = _children(client, "route")
    logged = client.download_artifacts(first.info.run_id, "config.json", str(tmp_path))
    assert json.loads(open(logged).read())["channels_last"] is True  # a key no pipeline spec had before

    main(["run", "--config", logged, *common])
    first, again = _children(client, "route")
    assert again.data.tags["dgmeta.config_hash"] == first.data.tags["dgmeta.config_hash"]
    assert (again.data.tags["dgmeta.target"], again.data.tags["dgmeta.seed"], again.data.params["hp.lr"]) == ("sketch", "1", "0.001")
    assert again.data.metrics["test_acc"] == first.data.metrics["test_acc"]
