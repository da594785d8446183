"""Model registry, champion/challenger decisions, `dgmeta retrain` and its lock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from dgmeta.cli.main import main
from dgmeta.errors import TrackingError
from dgmeta.locks import LockHeldError, lock_path_for, pipeline_lock
from dgmeta.orchestration.promotion import decide
from dgmeta.orchestration.retrain import retrain
from dgmeta.runs.config import RunConfig
from dgmeta.tracking import model_registry as registry
from dgmeta.tracking.compare import RunRecord
from dgmeta.tracking.model_registry import Evaluation
from tests.fake_runs import FINGERPRINT_ENV, _template_store, fake_fingerprint, fake_train, log_child, store  # noqa: F401

SPEC = """
dataset: toy
base: erm
targets: [d0, d1]
seeds: [0, 1]
steps: 5
experiment: retrain
hparams: {{lr: {lr}}}
register: {{model_name: toy, margin: 0.5}}
"""


def write_spec(tmp_path, lr=0.01, seeds="[0, 1]"):
    path = tmp_path / "toy.yaml"
    path.write_text(SPEC.format(lr=lr).replace("seeds: [0, 1]", f"seeds: {seeds}"))
    return path


def evaluation(scores: dict[tuple[str, str], float], protocol="dg") -> Evaluation:
    runs = [
        RunRecord(f"r{t}{s}", "e", "FINISHED", 0, {"dgmeta.target": t, "dgmeta.seed": s, "dgmeta.protocol": protocol, "dgmeta.dataset": "pacs"}, {}, {"test_acc": acc})
        for (t, s), acc in scores.items()
    ]
    return Evaluation(runs)


def test_decisions():
    champion = evaluation({("a", "0"): 0.60, ("a", "1"): 0.62, ("b", "0"): 0.70})
    assert decide(evaluation({("a", "0"): 0.5}), None, 0.5, "m").promoted
    better = decide(evaluation({("a", "0"): 0.61, ("a", "1"): 0.63, ("b", "0"): 0.71, ("z", "9"): 0.0}), champion, 0.5, "m", "3")
    assert better.promoted and better.n_pairs == 3 and better.delta_pp == pytest.approx(1.0)  # (z, 9) is unpaired, ignored
    assert "beats v3 by +1.00 pp" in better.reason
    close = decide(evaluation({("a", "0"): 0.605, ("a", "1"): 0.625, ("b", "0"): 0.705}), champion, 0.5, "m", "3")
    assert not close.promoted and close.delta_pp == pytest.approx(0.5)  # must be *more* than the margin
    assert not decide(evaluation({("c", "0"): 0.99}), champion, 0.5, "m").promoted  # nothing in common
    other_protocol = decide(evaluation({("a", "0"): 0.99}, protocol="msda"), champion, 0.5, "m")
    assert not other_protocol.promoted and "protocol msda differs" in other_protocol.reason


def test_register_run_tags_aliases_and_download(tmp_path, store):
    result = fake_train(RunConfig(dataset="toy", targets=["d1"], seeds=[0], experiment="reg"))
    (run,) = result.runs
    version = registry.register_run(run.run_id, "toy", alias="champion")
    client = MlflowClient(tracking_uri=store)
    stored = client.get_model_version_by_alias("toy", "champion")
    assert str(stored.version) == str(version.version) and stored.source == f"runs:/{run.run_id}/model"
    assert float(stored.tags["test_acc"]) == pytest.approx(run.test_acc)
    assert stored.tags["data_fingerprint"] == "fake-toy-v1" and len(stored.tags["config_hash"]) == 16
    import mlflow

    mlflow.set_tracking_uri(store)
    folder = mlflow.artifacts.download_artifacts(artifact_uri="models:/toy@champion", dst_path=str(tmp_path / "dl"))
    assert open(os.path.join(folder, "network.pt"), "rb").read() == b"fake network d1"

    bare = log_child(client, client.get_experiment_by_name("reg").experiment_id, "d0", 0, 0.5)
    with pytest.raises(TrackingError, match="has no model/network.pt artifact"):
        registry.register_run(bare, "toy")


def test_retrain_promotes_skips_forces_and_records(tmp_path, store, monkeypatch):
    spec = write_spec(tmp_path)
    quiet = dict(train_fn=fake_train, fingerprint_fn=fake_fingerprint, echo=lambda _: None)
    client = MlflowClient(tracking_uri=store)

    first = retrain(spec, **quiet)
    assert first.promoted and first.version == "1" and first.reason == "no champion yet"

    skipped = retrain(spec, **quiet)
    assert skipped.outcome == "skipped" and "unchanged since champion v1" in skipped.reason
    assert len(client.search_model_versions("name='toy'")) == 1  # nothing trained, nothing registered

    forced = retrain(spec, force=True, **quiet)
    assert forced.outcome == "rejected" and forced.delta_pp == pytest.approx(0.0) and forced.n_pairs == 4
    v2 = client.get_model_version("toy", "2")
    assert v2.tags["decision"] == "rejected" and "not more than the margin 0.5 pp" in v2.tags["decision_reason"]
    assert str(client.get_model_version_by_alias("toy", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("toy", "champion").version) == "1"
    report = client.download_artifacts(v2.tags["parent_run_id"], "registry/decision.md", str(tmp_path))
    assert "challenger rejected" in open(report).read()

    # a better config (+2 pp from lr 0.012) trained on the champion's seeds, although the spec now says seed 7
    better_spec = write_spec(tmp_path, lr=0.012, seeds="[7]")
    promoted = retrain(better_spec, **quiet)
    assert promoted.promoted and promoted.version == "3" and promoted.delta_pp == pytest.approx(2.0)
    v3 = client.get_model_version("toy", "3")
    assert v3.tags["seeds"] == "0,1" and v3.tags["targets"] == "d0,d1"
    assert str(client.get_model_version_by_alias("toy", "champion").version) == "3"
    with pytest.raises(Exception):
        client.get_model_version_by_alias("toy", "challenger")  # dropped on promotion

    # new data: not skipped although the config is the champion's
    monkeypatch.setenv(FINGERPRINT_ENV, "2")
    margin_override = retrain(better_spec, margin=5.0, **quiet)
    assert margin_override.outcome == "rejected" and "margin 5 pp" in margin_override.reason
    assert margin_override.version == "4"  # it did train and register


def test_lock_blocks_a_second_retrain_of_the_same_pipeline(tmp_path, store, capsys):
    spec = write_spec(tmp_path)
    with pipeline_lock(spec):
        with pytest.raises(LockHeldError, match=r"retraining of toy.yaml is already running \(pid \d+"):
            retrain(spec, train_fn=fake_train, fingerprint_fn=fake_fingerprint, echo=lambda _: None)
        with pytest.raises(SystemExit) as info:
            main(["retrain", str(spec)])
        assert info.value.code == LockHeldError.exit_code
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: retraining of toy.yaml is already running") and "\n" not in err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = write_spec(elsewhere)
    with pipeline_lock(spec), pipeline_lock(other):  # another pipeline has its own lock
        pass


def test_lock_held_by_another_process_and_released_when_it_dies(tmp_path):
    spec = write_spec(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from dgmeta.locks import pipeline_lock
            with pipeline_lock({str(spec)!r}):
                print("locked", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeldError, match=f"pid {holder.pid}"):
            with pipeline_lock(spec):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with pipeline_lock(spec) as path:  # the kernel released it with the process
        assert path == lock_path_for(spec)
