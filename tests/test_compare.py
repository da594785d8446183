"""`dgmeta compare`: statistics, grouping, paired deltas, excluded runs and every output format."""

from __future__ import annotations

import base64
import csv
import io
import math
import re

import pytest
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats

from dgmeta.cli.main import main
from dgmeta.errors import ConfigError
from dgmeta.tracking import stats
from dgmeta.tracking.compare import AVERAGE, compare, load_runs
from dgmeta.tracking.compare_report import render, to_csv
from tests.fake_runs import _template_store, log_child, store  # noqa: F401 (fixtures)

# meta=none vs meta=init, two targets, three seeds; init is +2 pp on d0 and +1..+3 on d1.
NONE = {("d0", 0): 0.60, ("d0", 1): 0.62, ("d0", 2): 0.64, ("d1", 0): 0.70, ("d1", 1): 0.71, ("d1", 2): 0.75}
INIT = {("d0", 0): 0.62, ("d0", 1): 0.64, ("d0", 2): 0.66, ("d1", 0): 0.71, ("d1", 1): 0.73, ("d1", 2): 0.78}


# Outputs of the hand-written incomplete-beta implementation that scipy.stats replaced (recorded before
# the switch): the reported CIs and p-values must not move by more than 1e-6.
OLD_T975 = {1: 12.706204736172367, 2: 4.302652729749752, 4: 2.776445105198036, 9: 2.2621571627978483, 29: 2.0452296421326537, 120: 1.9799304050820865}
OLD_P = {(0.3, 1): 0.8144528418445155, (2.1, 1): 0.2829260562430177, (7.5, 1): 0.08438492631768266, (0.3, 2): 0.792485660840178,
         (2.1, 2): 0.17054986918996745, (7.5, 2): 0.017317326879372444, (0.3, 4): 0.77912142827746, (2.1, 4): 0.1036532863176022,
         (7.5, 4): 0.0016908715323222983, (0.3, 9): 0.7709907037415252, (2.1, 9): 0.06511828241215198, (7.5, 9): 3.692741261658781e-05,
         (0.3, 29): 0.766317093328968, (2.1, 29): 0.04454195803629045, (7.5, 29): 2.8841891530650444e-08,
         (0.3, 120): 0.7646962111751754, (2.1, 120): 0.037823428298048446, (7.5, 120): 1.2169766349206599e-11}


@pytest.mark.parametrize("dof", sorted(OLD_T975))
def test_scipy_statistics_match_the_former_implementation(dof):
    assert stats.t_quantile(0.975, dof) == pytest.approx(OLD_T975[dof], rel=1e-6)
    for t in (0.3, 2.1, 7.5):
        assert stats.t_two_sided_p(t, dof) == pytest.approx(OLD_P[(t, dof)], rel=1e-6, abs=1e-14)
        assert stats.t_two_sided_p(-t, dof) == pytest.approx(OLD_P[(t, dof)], rel=1e-6, abs=1e-14)
    values = [float(v) for v in range(dof + 1)]
    std = math.sqrt(sum((v - dof / 2) ** 2 for v in values) / dof)
    assert stats.summarize(values).ci95 == pytest.approx(OLD_T975[dof] * std / math.sqrt(dof + 1), rel=1e-6)


def test_summary_and_paired_test_values():
    s = stats.summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.ci95 == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert math.isnan(stats.summarize([5.0]).ci95)
    a, b = [1.0, 2.0, 4.0, 7.0], [0.5, 2.1, 3.0, 5.5]
    t, p = stats.paired_t_test(a, b)
    reference = scipy_stats.ttest_rel(a, b)
    assert t == pytest.approx(reference.statistic) and p == pytest.approx(reference.pvalue)
    assert math.isnan(stats.paired_t_test([1.0, 2.0], [0.0, 1.0])[1])  # constant difference: undefined


@pytest.fixture
def populated(store):
    client = MlflowClient(tracking_uri=store)
    exp = client.create_experiment("cmp", artifact_location=store.replace("sqlite:///", "file://").replace("mlruns.db", "art"))
    for (target, seed), acc in NONE.items():
        log_child(client, exp, target, seed, acc, meta="none")
    for (target, seed), acc in INIT.items():
        log_child(client, exp, target, seed, acc, meta="init")
    failed = log_child(client, exp, "d0", 3, 0.99, status="FAILED", meta="init")
    no_metric = log_child(client, exp, "d1", 3, None, meta="init")
    running = log_child(client, exp, "d1", 4, None, status="RUNNING", meta="none")
    other = log_child(client, exp, "d0", 0, 0.10, meta="none", dataset="office_home")
    client.create_run(exp, tags={"dgmeta.role": "parent", "dgmeta.meta": "none"})  # parents are not results
    return {"client": client, "failed": failed, "no_metric": no_metric, "running": running, "other": other}


def test_groups_targets_average_deltas_and_exclusions(populated):
    comparison = compare(["cmp"], "tags.dgmeta.dataset = 'pacs'", ("base", "meta"), "meta=none")
    assert comparison.groups() == [("erm", "init"), ("erm", "none")]
    none_d0 = comparison.row(("erm", "none"), "d0").summary
    assert none_d0.n == 3 and none_d0.mean == pytest.approx(62.0) and none_d0.std == pytest.approx(2.0)
    assert none_d0.ci95 == pytest.approx(scipy_stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3))
    # avg: mean over targets per seed first, then mean/std over seeds
    per_seed = [100 * (NONE[("d0", s)] + NONE[("d1", s)]) / 2 for s in range(3)]
    avg = comparison.row(("erm", "none"), AVERAGE).summary
    assert avg.mean == pytest.approx(sum(per_seed) / 3) and avg.std == pytest.approx(scipy_stats.tstd(per_seed))

    init_d1 = comparison.row(("erm", "init"), "d1")
    assert init_d1.delta == pytest.approx(100 * (sum(INIT[("d1", s)] for s in range(3)) - sum(NONE[("d1", s)] for s in range(3))) / 3)
    expected_p = scipy_stats.ttest_rel([INIT[("d1", s)] for s in range(3)], [NONE[("d1", s)] for s in range(3)]).pvalue
    assert init_d1.n_pairs == 3 and init_d1.p_value == pytest.approx(expected_p)
    init_avg = comparison.row(("erm", "init"), AVERAGE)
    assert init_avg.n_pairs == 6  # every (target, seed) pair pooled
    assert comparison.row(("erm", "none"), "d0").is_reference

    excluded = {e.run.run_id: e.reason for e in comparison.excluded}
    assert excluded[populated["failed"]] == "status FAILED"
    assert excluded[populated["no_metric"]] == "no test_acc metric"
    assert excluded[populated["running"]] == "status RUNNING"
    assert populated["other"] not in excluded  # filtered out by the dataset filter, not merely excluded
    # the failed run's 0.99 never reached an average
    assert comparison.row(("erm", "init"), "d0").summary.mean == pytest.approx(64.0)


def test_rerun_supersedes_older_run_of_same_cell(populated):
    client = populated["client"]
    exp = client.get_experiment_by_name("cmp").experiment_id
    newer = log_child(client, exp, "d0", 0, 0.90, meta="none")
    comparison = compare(["cmp"], "tags.dgmeta.dataset = 'pacs'", ("meta",))
    assert comparison.row(("none",), "d0").summary.mean == pytest.approx(100 * (0.90 + 0.62 + 0.64) / 3)
    reasons = [e.reason for e in comparison.excluded]
    assert any(r.startswith(f"superseded by newer run {newer[:8]}") for r in reasons)


def test_unpaired_when_seeds_differ(store):
    client = MlflowClient(tracking_uri=store)
    exp = client.create_experiment("seeds")
    for seed, acc in ((0, 0.5), (1, 0.6)):
        log_child(client, exp, "d0", seed, acc, meta="none")
    for seed, acc in ((5, 0.7), (6, 0.8)):
        log_child(client, exp, "d0", seed, acc, meta="init")
    comparison = compare(["seeds"], None, ("meta",), "meta=none")
    row = comparison.row(("init",), "d0")
    assert row.delta == pytest.approx(20.0) and row.p_value is None and row.n_pairs == 0
    assert any("unpaired" in note for note in comparison.notes)


def test_user_mistakes_are_one_line_config_errors(populated):
    with pytest.raises(ConfigError, match="no MLflow experiment named 'nope'.*known experiments: .*cmp"):
        load_runs(["nope"])
    with pytest.raises(ConfigError, match="invalid --filter"):
        load_runs(["cmp"], "tags.dgmeta.dataset ==== 'x'")
    with pytest.raises(ConfigError, match="not a --group-by key"):
        compare(["cmp"], None, ("base",), "meta=none")
    with pytest.raises(ConfigError, match="not key=value"):
        compare(["cmp"], None, ("meta",), "meta")


def test_markdown_csv_html_renderings(populated):
    comparison = compare(["cmp"], "tags.dgmeta.dataset = 'pacs'", ("meta",), "meta=none")
    markdown = render(comparison, "markdown")
    assert "| init | avg | 3 |" in markdown and "## Runs not averaged" in markdown and populated["failed"] in markdown
    rows = list(csv.DictReader(io.StringIO(to_csv(comparison))))
    assert len(rows) == 6  # 2 groups x (2 targets + avg)
    init_d0 = next(r for r in rows if r["meta"] == "init" and r["target"] == "d0")
    assert float(init_d0["mean"]) == pytest.approx(64.0) and float(init_d0["delta"]) == pytest.approx(2.0)
    assert init_d0["p_value"] == ""  # a constant +2 pp difference has no spread: no t-test
    init_d1 = next(r for r in rows if r["meta"] == "init" and r["target"] == "d1")
    assert float(init_d1["p_value"]) == pytest.approx(scipy_stats.ttest_rel([0.71, 0.73, 0.78], [0.70, 0.71, 0.75]).pvalue)
    html = render(comparison, "html")
    image = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert image and base64.b64decode(image.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<table>" in html and "http" not in html.split("<body>")[1]  # self-contained: nothing fetched
    assert render(comparison, "table").count("avg") == 2


def test_cli_writes_reports_and_logs_a_compare_run(populated, tmp_path, capsys):
    out = tmp_path / "report.html"
    main(["compare", "--experiment", "cmp", "--filter", "tags.dgmeta.dataset = 'pacs'", "--group-by", "meta", "--against", "meta=none", "--output", str(out), "--log"])
    text = capsys.readouterr().out
    assert f"wrote {out} (html, 2 group(s), 3 run(s) not averaged)" in text
    assert out.read_text().startswith("<!DOCTYPE html>")
    client = populated["client"]
    (compare_run,) = client.search_runs([client.get_experiment_by_name("cmp").experiment_id], "tags.`dgmeta.role` = 'compare'")
    files = {a.path for a in client.list_artifacts(compare_run.info.run_id, "compare")}
    assert files == {"compare/report.md", "compare/report.csv", "compare/report.html"}
    assert compare_run.data.params["against"] == "meta=none"
    # the compare run is not a result: a second comparison sees the same groups
    main(["compare", "--experiment", "cmp", "--group-by", "meta", "--format", "csv"])
    csv_text = capsys.readouterr().out
    assert csv_text.splitlines()[0].startswith("meta,target,n,mean")


def test_cli_error_is_one_line(populated, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--experiment", "missing"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no MLflow experiment named 'missing'") and "\n" not in err
