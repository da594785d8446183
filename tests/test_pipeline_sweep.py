"""Sweeps: grid and random settings, resuming by config hash, parallel workers, failures."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from dgmeta.errors import ConfigError
from dgmeta.orchestration.sweep import grid_points, parse_grid, plan_sweep, random_points, run_sweep
from dgmeta.runs.config import RunConfig
from tests.fake_runs import _template_store, fake_accuracy, fake_train, store  # noqa: F401 (fixtures)


def base_config(**kw) -> RunConfig:
    values = dict(dataset="toy", base="erm", targets=["d0", "d1"], seeds=[0, 1], steps=3, experiment="sweep", quiet=True)
    values.update(kw)
    return RunConfig(**values)


def no_domains(config):
    raise AssertionError("targets are explicit")


def test_grid_is_the_product_and_may_vary_run_options():
    points = grid_points(parse_grid(["lr=0.01,0.02", "meta=none,init"]))
    assert [(p.options, p.hparams) for p in points] == [
        ({"meta": "none"}, {"lr": "0.01"}), ({"meta": "init"}, {"lr": "0.01"}),
        ({"meta": "none"}, {"lr": "0.02"}), ({"meta": "init"}, {"lr": "0.02"}),
    ]
    assert grid_points(parse_grid(["steps=5,10"]))[1].options == {"steps": 10}
    for bad, message in (("lr", "not key=v1,v2"), ("lr=", "not key=v1,v2"), ("lr=1,,2", "not key=v1,v2"), ("seeds=1,2", "targets and seeds are always swept")):
        with pytest.raises(ConfigError, match=message):
            parse_grid([bad])
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["lr=1", "lr=2"])


def test_random_draws_are_seeded_and_respect_pinned_values():
    config = base_config(base="dann", hparams={"lambda_max": 0.3})
    first, again, other = random_points(config, 3, seed=7), random_points(config, 3, seed=7), random_points(config, 3, seed=8)
    assert [p.hparams for p in first] == [p.hparams for p in again]
    assert [p.hparams for p in first] != [p.hparams for p in other]
    assert len({p.hparams["lr"] for p in first}) == 3  # three different settings
    assert all(p.hparams["lambda_max"] == 0.3 for p in first)  # pinned by the spec / --set
    with pytest.raises(ConfigError, match="must be positive"):
        random_points(config, 0, seed=0)


def test_sweep_runs_every_cell_once_and_resumes(store):
    config = base_config()
    points = grid_points(parse_grid(["lr=0.01,0.02"]))
    plan = plan_sweep(config, points, domains_fn=no_domains)
    assert (plan.total, plan.done, len(plan.jobs)) == (8, 0, 4)  # 2 settings x 2 seeds, each job both targets
    report = run_sweep(plan, train_fn=fake_train, echo=lambda _: None)
    assert len(report.completed) == 4 and not report.failed
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("sweep").experiment_id
    children = client.search_runs([experiment], "tags.`dgmeta.role` = 'child'")
    assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}
    accs = {(r.data.params["hp.lr"], r.data.tags["dgmeta.target"], r.data.tags["dgmeta.seed"]): r.data.metrics["test_acc"] for r in children}
    assert accs[("0.02", "d1", "1")] == pytest.approx(fake_accuracy(base_config(hparams={"lr": 0.02}), "d1", 1))

    # everything finished: nothing to do
    assert len(plan_sweep(config, points, domains_fn=no_domains).jobs) == 0
    # a run that did not finish is redone, alone
    victim = next(r for r in children if r.data.params["hp.lr"] == "0.02" and r.data.tags["dgmeta.target"] == "d0" and r.data.tags["dgmeta.seed"] == "1")
    client.set_terminated(victim.info.run_id, "FAILED")
    plan = plan_sweep(config, points, domains_fn=no_domains)
    assert (plan.done, len(plan.jobs)) == (7, 1)
    (job,) = plan.jobs
    assert job.config.targets == ["d0"] and job.config.seeds == [1] and job.config.hparams == {"lr": 0.02}
    # adding a seed only adds that seed's runs
    more = plan_sweep(base_config(seeds=[0, 1, 2]), points, domains_fn=no_domains)
    assert more.total == 12 and more.done == 7 and sorted(len(j.config.targets) for j in more.jobs) == [1, 2, 2]


def test_parallel_jobs_and_a_failing_setting(store):
    config = base_config(targets=["d0", "d1"], seeds=[0])
    points = grid_points(parse_grid(["lr=0.01,0.03,0.9"]))  # the fake diverges at lr >= 0.5
    lines: list[str] = []
    report = run_sweep(plan_sweep(config, points, domains_fn=no_domains), train_fn=fake_train, jobs=2, echo=lines.append)
    assert len(report.completed) == 2
    ((failed_job, why),) = report.failed
    assert failed_job.config.hparams == {"lr": 0.9} and why.startswith("fake training diverged on d0 (lr 0.9)")
    assert sum("FAILED: fake training diverged" in line for line in lines) == 1
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id], "tags.`dgmeta.role` = 'child'")
    statuses = sorted((r.data.params.get("hp.lr", "0.9"), r.data.tags["dgmeta.target"], r.info.status) for r in runs)
    assert statuses == [("0.01", "d0", "FINISHED"), ("0.01", "d1", "FINISHED"), ("0.03", "d0", "FINISHED"), ("0.03", "d1", "FINISHED"), ("0.9", "d0", "FAILED")]
    # the failed setting is the only job left
    (left,) = plan_sweep(config, points, domains_fn=no_domains).jobs
    assert left.config.hparams == {"lr": 0.9} and left.config.targets == ["d0", "d1"]


def test_invalid_hyperparameter_fails_before_anything_runs(store):
    with pytest.raises(ConfigError, match="unknown hyperparameter 'lambda_max'"):
        plan_sweep(base_config(), grid_points(parse_grid(["lambda_max=1,2"])), domains_fn=no_domains)


def test_cli_dry_run_reports_the_plan_and_what_is_already_done(tmp_path, store, capsys):
    from dgmeta.cli.main import main
    from dgmeta.orchestration.spec import load_pipeline

    spec = tmp_path / "toy.yaml"
    spec.write_text("dataset: toy\ntargets: [d0, d1]\nseeds: [0]\nsteps: 3\nexperiment: sweep\n")
    argv = ["sweep", str(spec), "--grid", "lr=0.01,0.02", "--seeds", "0,1", "--dry-run"]
    main(argv)
    out = capsys.readouterr().out
    assert "2 setting(s) x 2 seed(s), 8 runs: 0 already finished, 4 job(s) to run (experiment sweep)" in out
    assert "lr=0.01 seed 1 → d0,d1" in out

    # the same cells run by the library (as the CLI would, with the fake trainer) are then skipped
    config = load_pipeline(spec).to_run_config({"seeds": [0], "quiet": True})
    run_sweep(plan_sweep(config, grid_points(parse_grid(["lr=0.01"])), domains_fn=no_domains), train_fn=fake_train, echo=lambda _: None)
    main(argv)
    assert "8 runs: 2 already finished, 3 job(s) to run" in capsys.readouterr().out

    with pytest.raises(SystemExit) as info:
        main(["sweep", str(spec), "--grid", "lr=0.1", "--random", "2"])
    assert info.value.code == 2 and "--grid and --random both given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", str(spec), "--seeds", "0,x"])
    assert "--seeds '0,x' is not a comma-separated list" in capsys.readouterr().err
