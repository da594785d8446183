"""Selection over sweeps (DomainBed's collect_results) and `compare`'s explanations, on fake MLflow runs."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats

from dgmeta.cli.main import main
from dgmeta.errors import ConfigError
from dgmeta.tracking.compare import AVERAGE, compare
from dgmeta.tracking.compare_report import render
from tests.fake_runs import _template_store, fake_train, log_child, store  # noqa: F401 (fixtures)

# Three settings on three domains, built so that the three rules disagree on target d0:
#   training-domain validation prefers lr=0.1 (val 0.95), except seed 1 where lr=0.01 validates at 0.99;
#   the oracle prefers lr=0.01 (best on d0 itself);
#   leave-one-domain-out prefers lr=0.001 (best on the held-out sources d1, d2).
TEST = {
    "0.1": {"d0": 0.60, "d1": 0.50, "d2": 0.50},
    "0.01": {"d0": 0.80, "d1": 0.55, "d2": 0.55},
    "0.001": {"d0": 0.70, "d1": 0.70, "d2": 0.70},
}
VAL = {"0.1": 0.95, "0.01": 0.85, "0.001": 0.75}


def log_draw(client, experiment: str, lr: str, target: str, seed: int, test_acc: float, val_acc: float | None, **tags) -> str:
    run_tags = {"dgmeta.role": "child", "dgmeta.target": target, "dgmeta.seed": str(seed), "dgmeta.dataset": "toy",
                "dgmeta.base": "erm", "dgmeta.meta": "none", "dgmeta.protocol": "dg", "dgmeta.backbone": "net"}
    run_tags.update({f"dgmeta.{k}": v for k, v in tags.items()})
    run = client.create_run(experiment, tags=run_tags)
    client.log_param(run.info.run_id, "hp.lr", lr)
    client.log_param(run.info.run_id, "hp.dropout", "0.0")  # the same in every draw: not part of the label
    client.log_metric(run.info.run_id, "test_acc", test_acc)
    if val_acc is not None:
        client.log_metric(run.info.run_id, "val_acc", val_acc)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture
def sweep_store(store):
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("sweep")
    for lr, accs in TEST.items():
        for target, acc in accs.items():
            for seed in (0, 1):
                val = 0.99 if (lr, seed) == ("0.01", 1) else VAL[lr]
                log_draw(client, experiment, lr, target, seed, acc + 0.01 * seed, val)
    return client


def _values(comparison, target: str) -> tuple[float, float]:
    summary = comparison.row(("toy",), target).summary
    return summary.mean, summary.ci95


def test_training_domain_validation_picks_per_seed_then_averages_seeds(sweep_store):
    comparison = compare(["sweep"], None, ("dataset",), None, select="training-domain")
    row = comparison.row(("toy",), "d0")
    # seed 0: lr=0.1 validates best (60%); seed 1: lr=0.01 (81%): DomainBed chooses per trial
    assert row.summary.n == 2 and row.summary.mean == pytest.approx((60 + 81) / 2)
    assert row.summary.ci95 == pytest.approx(scipy_stats.t.ppf(0.975, 1) * scipy_stats.tstd([60, 81]) / math.sqrt(2))
    assert row.draws == 3 and row.chosen == "lr=0.1 (1 seed); lr=0.01 (1 seed)"
    assert comparison.swept and comparison.selection == "training-domain"


def test_oracle_uses_the_target_and_is_labelled(sweep_store):
    comparison = compare(["sweep"], None, ("dataset",), None, select="oracle")
    assert _values(comparison, "d0")[0] == pytest.approx(80.5)  # lr=0.01 both seeds
    assert comparison.row(("toy",), "d0").chosen == "lr=0.01 (2 seeds)"
    assert _values(comparison, "d1")[0] == pytest.approx(70.5)  # lr=0.001 is best on d1 itself
    text = render(comparison, "table")
    assert "ORACLE" in text and "uses target labels" in text


def test_leave_one_domain_out_picks_the_best_on_held_out_sources(sweep_store):
    comparison = compare(["sweep"], None, ("dataset",), None, select="lodo")
    assert comparison.selection == "leave-one-domain-out"
    # for d0 the held-out sources d1, d2 score lr=0.001 best (70 vs 55 and 50), though lr=0.01 is better on d0
    assert comparison.row(("toy",), "d0").chosen == "lr=0.001 (2 seeds)"
    assert _values(comparison, "d0")[0] == pytest.approx(70.5)
    # avg: per seed the mean over targets of the selected draws, then over seeds
    per_seed = [(70 + 70 + 70) / 3 + s for s in (0, 1)]
    assert _values(comparison, AVERAGE)[0] == pytest.approx(sum(per_seed) / 2)
    text = render(comparison, "markdown")
    assert "leave-one-domain-out" in text and "trained on the target's labelled images" in text


def test_lodo_needs_every_other_domain_and_says_so(store):
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("one-target")
    for lr in ("0.1", "0.01"):
        log_draw(client, experiment, lr, "d0", 0, TEST[lr]["d0"], VAL[lr])
    comparison = compare(["one-target"], None, ("dataset",), None, select="leave-one-domain-out")
    assert comparison.rows == []
    assert any("held-out sources" in note and "sweep all targets" in note for note in comparison.notes)
    # the training-domain rule needs no other domain
    assert _values(compare(["one-target"], None, ("dataset",), None), "d0")[0] == pytest.approx(60.0)


def test_one_setting_per_group_is_reported_as_before(store):
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("plain")
    log_child(client, experiment, "d0", 0, 0.5)  # no val_acc, no hparams: nothing to select among
    log_child(client, experiment, "d0", 1, 0.7)
    for rule in ("training-domain", "leave-one-domain-out", "oracle"):
        comparison = compare(["plain"], None, ("base",), None, select=rule)
        assert _summary_mean(comparison) == pytest.approx(60.0) and not comparison.swept


def _summary_mean(comparison) -> float:
    return comparison.row(("erm",), "d0").summary.mean


def test_unknown_rule_is_a_one_line_error(sweep_store, capsys):
    with pytest.raises(ConfigError, match="unknown selection rule 'best'"):
        compare(["sweep"], None, ("dataset",), None, select="best")
    with pytest.raises(SystemExit) as info:
        main(["compare", "--experiment", "sweep", "--select", "best"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: unknown selection rule 'best'") and "\n" not in err


def test_cli_states_rule_and_std_convention(sweep_store, capsys):
    main(["compare", "--experiment", "sweep", "--group-by", "dataset", "--select", "oracle"])
    out = capsys.readouterr().out
    assert "selection: ORACLE" in out and "sample standard deviation (n-1)" in out and "lr=0.01 (2 seeds)" in out


def test_protocol_mismatch_is_explained(store, capsys):
    """The issue's case: DANN defaults to msda, ERM to dg; both ran sketch seeds 0 and 1."""
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("dgmeta")
    for seed in (0, 1):
        log_child(client, experiment, "sketch", seed, 0.50 + seed / 100, base="erm", protocol="dg")
        log_child(client, experiment, "sketch", seed, 0.55 + seed / 50, base="dann", protocol="msda")
    comparison = compare(["dgmeta"], None, ("base", "meta", "protocol", "backbone"), "base=erm")
    (note,) = [n for n in comparison.notes if "base=dann" in n]
    assert "base=dann ran protocol=msda, base=erm ran protocol=dg" in note
    assert "pairs need the same protocol" in note and "--protocol msda" in note and "leave protocol out of --group-by" in note
    # following the advice pairs them
    paired = compare(["dgmeta"], None, ("base",), "base=erm")
    assert paired.row(("dann",), "sketch").n_pairs == 2
    main(["compare", "--experiment", "dgmeta", "--against", "base=erm"])
    assert "pairs need the same protocol" in capsys.readouterr().out


def test_a_group_mixing_protocols_says_so(store):
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("mixed")
    for protocol, acc in (("dg", 0.5), ("msda", 0.6)):
        run_id = log_child(client, experiment, "sketch", 0, acc, base="erm", protocol=protocol)
        client.log_param(run_id, "protocol", protocol)
        client.log_metric(run_id, "val_acc", acc)
    comparison = compare(["mixed"], None, ("base",), None)
    row = comparison.row(("erm",), "sketch")
    assert row.draws == 2 and row.summary.mean == pytest.approx(60.0) and row.chosen == "protocol=msda (1 seed)"
    assert any("erm mixes protocol=dg/msda" in n and "--group-by base,protocol" in n for n in comparison.notes)
    assert not compare(["mixed"], None, ("base", "protocol"), None).notes


def test_disjoint_seeds_are_explained(store):
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("seeds")
    log_child(client, experiment, "d0", 0, 0.5, meta="none")
    log_child(client, experiment, "d0", 5, 0.7, meta="init")
    comparison = compare(["seeds"], None, ("meta",), "meta=none")
    (note,) = comparison.notes
    assert "meta=init ran d0 seed 5, meta=none ran d0 seed 0" in note and "same --target and --seed" in note


def test_sweep_prints_the_selected_results(tmp_path, store, capsys, monkeypatch):
    from dgmeta.orchestration import stages

    monkeypatch.setattr(stages, "default_train", fake_train)
    monkeypatch.setattr("dgmeta.orchestration.sweep.default_train", fake_train)
    spec = tmp_path / "toy.yaml"
    spec.write_text("dataset: toy\ntargets: [d0, d1]\nseeds: [0]\nsteps: 3\nexperiment: sweep\n")
    main(["sweep", str(spec), "--grid", "lr=0.01,0.02", "--seeds", "0,1"])
    out = capsys.readouterr().out
    assert "selection: training-domain validation" in out and "sample standard deviation (n-1)" in out
    # fake accuracy rises with lr and so does its val_acc: lr=0.02 is chosen on every seed
    assert "lr=0.02 (2 seeds)" in out
    main(["sweep", str(spec), "--grid", "lr=0.01,0.02", "--seeds", "0,1", "--select", "oracle"])
    out = capsys.readouterr().out
    assert "nothing to run" in out and "selection: ORACLE" in out
    main(["sweep", str(spec), "--grid", "lr=0.01,0.02", "--seeds", "0,1", "--target", "d0", "--select", "lodo"])
    assert "sweep all targets" in capsys.readouterr().out  # one target has no held-out sources to score on


def test_run_summary_prints_the_sample_std_like_compare(capsys):
    from types import SimpleNamespace

    from dgmeta.cli.run_cmd import print_results

    runs = [SimpleNamespace(target="sketch", seed=seed, test_acc=acc, val_acc=0.9, selected_step=2, images_per_second=10.0)
            for seed, acc in ((0, 0.50), (1, 0.55))]
    result = SimpleNamespace(config=SimpleNamespace(dataset="pacs-mini", base="erm", meta="none"), protocol="dg", runs=runs,
                             parent_run_id="abc", mean_test_acc=lambda: 0.525)
    print_results(result)
    out = capsys.readouterr().out
    cells = [cell.strip() for cell in out.split("│")]
    assert "52.50" in cells and "3.54" in cells and "2.50" not in cells  # sample std of 50, 55; population: 2.50
    assert "std (n-1)" in out and "sample standard deviation (n-1)" in out
