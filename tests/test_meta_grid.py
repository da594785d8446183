"""benchmarks/accuracy/meta_grid.py --base-from: a base arm is taken from another grid only when that
run trained exactly what the base arm would train."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dgmeta.runs.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "accuracy" / "meta_grid.py"
LOGGED_OUT = ("data_root", "tracking_uri", "resume", "quiet")  # what recipe_grid.run_one leaves out of a row


def load_meta_grid():
    spec = importlib.util.spec_from_file_location("meta_grid", SCRIPT)
    meta_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(meta_grid)
    return meta_grid


def recipe_grid_row(target: str, seed: int, test_acc: float, protocol=None, hparams=None, average="none", set_items=()):
    config = RunConfig(dataset="pacs", data_root="/x", base="dann", meta="none", protocol=protocol, targets=[target],
                       seeds=[seed], hparams=dict(hparams or {}), average=average, experiment="benchmarks-accuracy").to_dict()
    return {"recipe": "default", "base": "dann", "meta": "none", "protocol": protocol or "default", "target": target,
            "seed": seed, "test_acc": test_acc, "live_test_acc": test_acc, "val_acc": 0.9, "seconds": 1000.0,
            "run_id": f"run-{target}-{seed}-{test_acc}", "set": list(set_items),
            "config": {k: v for k, v in config.items() if k not in LOGGED_OUT}}


def run_base_arms(tmp_path: Path, rows: list[dict], targets: str = "art_painting,sketch") -> tuple[subprocess.CompletedProcess, list[dict]]:
    earlier = tmp_path / "dann_msda_default.jsonl"
    earlier.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "meta.jsonl"
    # a base arm that is not reusable would start training; an unreachable data root makes that fail fast
    proc = subprocess.run([sys.executable, str(SCRIPT), "--families", "dann-msda", "--arms", "base", "--targets", targets,
                           "--seeds", "0", "--base-from", str(earlier), "--out", str(out), "--data-root", str(tmp_path / "no-data"),
                           "--tracking-uri", f"sqlite:///{tmp_path / 'db.sqlite'}"], capture_output=True, text=True, timeout=300)
    written = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return proc, written


def test_identically_configured_runs_stand_in_for_base_arms(tmp_path):
    rows = [recipe_grid_row("art_painting", 0, 0.835), recipe_grid_row("sketch", 0, 0.727, protocol="msda")]
    proc, written = run_base_arms(tmp_path, rows)
    assert proc.returncode == 0, proc.stderr
    assert [(r["family"], r["arm"], r["target"], r["seed"], r["test_acc"]) for r in written] == [
        ("dann-msda", "base", "art_painting", 0, 0.835), ("dann-msda", "base", "sketch", 0, 0.727)]
    assert all(r["reused_from"] == "dann_msda_default.jsonl" and r["protocol"] == "msda" for r in written)
    assert written[0]["run_id"] == rows[0]["run_id"]


def test_an_averaged_run_stands_in_through_its_live_checkpoint_and_an_exact_run_comes_first(tmp_path):
    swad = {**recipe_grid_row("art_painting", 0, 0.80, average="swad"), "live_test_acc": 0.79}
    proc, written = run_base_arms(tmp_path, [swad], targets="art_painting")
    assert proc.returncode == 0, proc.stderr
    assert [(r["test_acc"], r["live_of_average"]) for r in written] == [(0.79, "swad")]
    assert "live checkpoint of its --average swad run" in proc.stdout
    # an older row without the device field is the same training
    exact = recipe_grid_row("art_painting", 0, 0.81)
    del exact["config"]["device"]
    (tmp_path / "second").mkdir()
    proc, written = run_base_arms(tmp_path / "second", [swad, exact], targets="art_painting")
    assert proc.returncode == 0, proc.stderr
    assert [(r["test_acc"], "live_of_average" in r) for r in written] == [(0.81, False)]


def test_a_run_trained_differently_is_not_reused(tmp_path):
    different = [recipe_grid_row("art_painting", 0, 0.81, hparams={"lr": 3e-4}),
                 recipe_grid_row("art_painting", 0, 0.82, set_items=["lr=3e-4"]),
                 recipe_grid_row("art_painting", 0, 0.83, protocol="dg"),
                 recipe_grid_row("art_painting", 1, 0.84)]
    proc, written = run_base_arms(tmp_path, different, targets="art_painting")
    assert written == []
    assert proc.returncode != 0 and "dann-msda base art_painting s0 failed" in proc.stderr


def test_a_missing_base_from_file_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--families", "dann-msda", "--arms", "base", "--targets", "sketch",
                           "--seeds", "0", "--base-from", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "m.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"--base-from {tmp_path / 'nope.jsonl'}: no such result file; give a recipe_grid.py --out file"]


def test_unknown_arm_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--families", "dann-msda", "--arms", "init,inti", "--out", str(tmp_path / "m.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "--arms: unknown arm 'inti' for dann-msda; known: base, base-lr, init, init-all, init-inner0"]


def test_shots_meta_arm_is_offered_only_where_there_are_target_shots(tmp_path):
    meta_grid = load_meta_grid()
    assert meta_grid.arm_options("mme-ssda", "init-shots-meta") == ("init", ["meta_episode=target_shots", "meta_shots_in_base=false"])
    assert "init-shots-meta" in meta_grid.arms_of("mme-ssda", optional=True)
    assert "init-shots-meta" not in meta_grid.arms_of("mme-ssda") + meta_grid.arms_of("dann-msda", optional=True)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--families", "dann-msda", "--arms", "init-shots-meta", "--out", str(tmp_path / "m.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        "--arms: unknown arm 'init-shots-meta' for dann-msda; known: base, base-lr, init, init-all, init-inner0"]


def test_table_pairs_each_arm_with_base_and_reports_training_time(tmp_path):
    def row(arm, target, acc, speed):
        return {"family": "dann-msda", "arm": arm, "target": target, "seed": 0, "test_acc": acc, "seconds": 600.0,
                "images_per_second": speed}

    rows = [row("base", "a", 0.80, 30.0), row("base", "b", 0.70, 34.0), row("init", "a", 0.82, 16.0), row("init", "b", 0.71, 16.0),
            row("init-all", "a", 0.83, 8.0)]
    rows[2]["meta_added_to_base_norm"] = {"median": 1.2, "q75": 1.5, "max": 3.0, "steps": 10}
    rows[3]["meta_added_to_base_norm"] = {"median": 0.8, "q75": 1.0, "max": 2.0, "steps": 10}
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--table", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "| dann-msda | init | 2 | 76.5 ± 69.9 | 10.0 | 2.12x | 1 (n = 2) |" in lines  # fastest base 34 / fastest init 16
    assert "| dann-msda | init-all | 1 | 83.0 | 10.0 | 4.25x |  |" in lines
    assert any(line.startswith("| dann-msda: init - base | +1.50 | ± 6.35 |") for line in lines)
    assert "| dann-msda: init - init-all | -1.00 | | | 1 | -1.00 | 0/1 | | |" in lines
    assert "| dann-msda: target | seed | base | init | init-all |" in lines
    assert "| a | 0 | 80.00 | 82.00 | 83.00 |" in lines
    assert "| b | 0 | 70.00 | 71.00 | - |" in lines


def test_toward_measures_whether_an_arm_follows_the_other_learners_gap(tmp_path):
    def row(arm, target, acc):
        return {"family": "dann-msda", "arm": arm, "target": target, "seed": 0, "test_acc": acc, "seconds": 600.0}

    base = {"a": 0.80, "b": 0.70, "c": 0.90, "d": 0.60}
    erm_gap = {"a": 0.04, "b": -0.02, "c": 0.00, "d": 0.06}  # ERM − base, points / 100
    # init closes exactly half of each gap: r = +1, slope +0.5; init-inner0 moves against it: r = −1, slope −1
    rows = [row("base", t, acc) for t, acc in base.items()]
    rows += [row("init", t, base[t] + erm_gap[t] / 2) for t in base] + [row("init-inner0", t, base[t] - erm_gap[t]) for t in base]
    # ERM + critic against ERM itself: no gap to follow, so no row
    rows += [dict(row(arm, t, acc + erm_gap[t]), family="erm-dg-critic") for arm in ("base", "critic")
             for t, acc in base.items()]
    results, erm = tmp_path / "m.jsonl", tmp_path / "erm_default.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # an averaged ERM run counts with its live checkpoint, what --average none reports
    erm.write_text("".join(json.dumps({"target": t, "seed": 0, "test_acc": 0.5, "live_test_acc": base[t] + erm_gap[t],
                                       "config": {"average": "swad"}}) + "\n" for t in base))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--table", str(results), "--toward", str(erm)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "| dann-msda: init | 4 | +1.00 |  | +0.50 |" in lines
    assert "| dann-msda: init-inner0 | 4 | -1.00 |  | -1.00 |" in lines
    toward = lines[next(i for i, line in enumerate(lines) if "moves base toward" in line):]
    assert not any(line.startswith("| erm-dg-critic") for line in toward)
    missing = subprocess.run([sys.executable, str(SCRIPT), "--table", str(results), "--toward", str(tmp_path / "nope.jsonl")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0 and "no such result file" in missing.stderr


def test_paired_line_reports_median_sign_count_and_exact_signed_rank_p():
    meta_grid = load_meta_grid()

    # one pair against four: the negative pair has rank 1, so W- = 1 and the exact two-sided p is 2 x 2/32
    line = meta_grid.paired_line("x", [1.0, 2.0, 3.0, 4.0, -0.5])
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "x" and cells[1] == "+1.90" and cells[4] == "5"
    assert cells[5:8] == ["+2.00", "4/5", "0.125"]
    # the pairs column is the first n whose minimum detectable effect at this sd is within 1.5 points
    needed = int(cells[8])
    sd = statistics.stdev([1.0, 2.0, 3.0, 4.0, -0.5])
    assert meta_grid.mde(needed, sd) <= 1.5 < meta_grid.mde(needed - 1, sd)
    assert meta_grid.pairs_to_detect(1.5, 50.0, most=100) is None
    # a single large pair moves the mean but not the median
    assert meta_grid.paired_line("y", [0.1, -0.2, 0.3, 20.0]).split("|")[6].strip() == "+0.20"


def test_a_grid_row_summarises_the_meta_terms_logged_share_of_the_step(tmp_path):
    spec = importlib.util.spec_from_file_location("recipe_grid", SCRIPT.parent / "recipe_grid.py")
    recipe_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_grid)
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'db.sqlite'}"
    client = MlflowClient(uri)  # not mlflow.set_tracking_uri: no global state for the other tests
    run_id = client.create_run(client.create_experiment("grid")).info.run_id
    for step, value in enumerate([0.5, 4.0, 1.0, 2.0, 3.0]):
        client.log_metric(run_id, recipe_grid.META_SHARE_METRIC, value, step=step)
    summary = recipe_grid.metric_summary(uri, run_id, recipe_grid.META_SHARE_METRIC)
    assert summary == {"median": 2.0, "q75": 3.0, "max": 4.0, "steps": 5, "first_tenth": 0.5, "last_tenth": 3.0}
    # a term that dies out: the tenths are taken in step order, whatever order the values were logged in
    for step in reversed(range(20)):
        client.log_metric(run_id, "train.critic/aux_loss", 1.0 if step < 2 else 0.01, step=step)
    fading = recipe_grid.metric_summary(uri, run_id, recipe_grid.META_SUMMARIES["critic_aux_loss"])
    assert fading["first_tenth"] == 1.0 and fading["last_tenth"] == 0.01 and fading["median"] == 0.01
    assert recipe_grid.metric_summary(uri, run_id, "never.logged") is None


def test_job_minutes_come_from_the_arms_own_runs_and_the_deadline_is_the_next_such_time():
    meta_grid = load_meta_grid()
    rows = [{"family": "dann-msda", "arm": "init", "seconds": 1800.0}, {"family": "dann-msda", "arm": "init", "seconds": 2400.0},
            {"family": "mcd-msda", "arm": "init", "seconds": 3600.0},
            {"family": "dann-msda", "arm": "base", "seconds": 9000.0, "reused_from": "dann_msda_default.jsonl"}]
    assert meta_grid.job_minutes(rows, "dann-msda", "init") == 1.25 * 35  # the median plus 25%
    assert meta_grid.job_minutes(rows, "mme-ssda", "init") == 1.25 * 40  # the arm in other families
    # a reused row's time was spent in another grid under other load: it does not set this grid's estimate
    assert meta_grid.job_minutes(rows, "dann-msda", "base") == meta_grid.recipe_grid.UNKNOWN_JOB_MINUTES
    now = time.mktime((2026, 12, 6, 23, 0, 0, 0, 0, -1))
    assert meta_grid.recipe_grid.deadline_of("23:30", now) - now == 30 * 60
    assert meta_grid.recipe_grid.deadline_of("01:00", now) - now == 2 * 3600  # past midnight: tomorrow's 01:00


def test_until_starts_no_job_that_would_run_past_it_and_a_bad_time_is_a_one_line_error(tmp_path):
    out = tmp_path / "meta.jsonl"
    out.write_text(json.dumps({"family": "dann-msda", "arm": "init", "target": "art_painting", "seed": 0, "test_acc": 0.86,
                               "seconds": 40 * 60.0}) + "\n")
    until = time.strftime("%H:%M", time.localtime(time.time() + 20 * 60))
    # the sketch job is expected to take 50 minutes (40 plus 25%): it must be skipped, not started (starting fails fast on the missing data)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--families", "dann-msda", "--arms", "init", "--targets", "art_painting,sketch",
                           "--seeds", "0", "--out", str(out), "--data-root", str(tmp_path / "no-data"), "--until", until,
                           "--tracking-uri", f"sqlite:///{tmp_path / 'db.sqlite'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "dann-msda init sketch s0: not started, its expected 50 minutes would run past --until" in proc.stdout
    assert len(out.read_text().splitlines()) == 1
    bad = subprocess.run([sys.executable, str(SCRIPT), "--families", "dann-msda", "--out", str(out), "--until", "25:00"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == ["--until '25:00': give a local time as HH:MM, e.g. --until 23:30"]


def test_the_grid_scripts_name_only_known_families_arms_and_result_files(tmp_path):
    """meta_grids.sh and default_recipe_grids.sh run for hours across sessions: a typo in a family, an arm, a
    recipe or a --base-from file would surface only when its turn comes. A stand-in ``python`` records each call."""
    import shlex
    import stat

    spec = importlib.util.spec_from_file_location("recipe_grid", SCRIPT.parent / "recipe_grid.py")
    recipe_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_grid)
    meta_grid = load_meta_grid()
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    calls = tmp_path / "calls.txt"
    stub = stub_dir / "python"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{stub_dir}:/usr/bin:/bin", "UNTIL": "23:59"}
    for script in ("meta_grids.sh", "default_recipe_grids.sh"):
        subprocess.run(["bash", str(SCRIPT.parent / script), "--data-root", "/data"], env=env, check=True, timeout=60)
    lines = calls.read_text().splitlines()
    meta_calls = [shlex.split(line) for line in lines if "meta_grid.py" in line]
    recipe_calls = [shlex.split(line) for line in lines if "recipe_grid.py" in line]
    assert meta_calls and recipe_calls and len(meta_calls) + len(recipe_calls) == len(lines)

    def value(argv, flag):
        return argv[argv.index(flag) + 1] if flag in argv else None

    for argv in meta_calls + recipe_calls:
        assert value(argv, "--data-root") == "/data" and value(argv, "--until") == "23:59", argv
        for path in [value(argv, "--out")] + [argv[i + 1] for i, a in enumerate(argv) if a == "--base-from"]:
            assert path and (REPO / path).parent.is_dir(), argv
    for argv in meta_calls:
        families = value(argv, "--families").split(",")
        for family in families:
            assert family in meta_grid.FAMILIES, argv
            arms = value(argv, "--arms")
            if arms:
                assert set(arms.split(",")) <= set(meta_grid.arms_of(family, optional=True)), argv
        for path in [argv[i + 1] for i, a in enumerate(argv) if a == "--base-from"]:
            assert (REPO / path).is_file(), f"--base-from {path}: the file must exist before the grid runs"
    for argv in recipe_calls:
        assert set(value(argv, "--recipes").split(",")) <= set(recipe_grid.RECIPES), argv


def test_plan_lists_each_unfinished_arm_with_its_median_minutes_and_a_reusable_base_at_none(tmp_path):
    out = tmp_path / "meta.jsonl"
    out.write_text("".join(json.dumps({"family": "dann-msda", "arm": "init", "target": t, "seed": 0, "test_acc": 0.8,
                                       "seconds": m * 60.0}) + "\n" for t, m in (("art_painting", 30), ("cartoon", 50))))
    earlier = tmp_path / "dann_msda_default.jsonl"
    earlier.write_text(json.dumps(recipe_grid_row("sketch", 0, 0.7)) + "\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--families", "dann-msda", "--arms", "base,init", "--targets", "art_painting,sketch",
                           "--seeds", "0", "--base-from", str(earlier), "--out", str(out), "--data-root", str(tmp_path / "no-data"), "--plan"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "plan    0.0 dann-msda base art_painting s0: reused from dann_msda_default.jsonl once that grid has run it",
        "plan    0.0 dann-msda base sketch s0: reused from dann_msda_default.jsonl",
        "plan   40.0 dann-msda init sketch s0",
    ]
    assert len(out.read_text().splitlines()) == 2  # nothing reused or run was written


def test_a_finished_arm_that_ran_another_configuration_than_the_arm_gives_now_stops_the_grid(tmp_path):
    # a base arm reused from a recipe_grid run (logged with no --protocol: DANN's own msda) is the arm's job
    base = {**recipe_grid_row("sketch", 0, 0.72), "family": "dann-msda", "arm": "base", "reused_from": "dann_msda_default.jsonl"}
    init_config = RunConfig(dataset="pacs", data_root="/x", base="dann", meta="init", protocol="msda", targets=["sketch"],
                            seeds=[0], steps=300, experiment="benchmarks-accuracy").to_dict()
    init = {"family": "dann-msda", "arm": "init", "base": "dann", "meta": "init", "protocol": "msda", "target": "sketch", "seed": 0,
            "test_acc": 0.74, "seconds": 60.0, "set": [], "config": {k: v for k, v in init_config.items() if k not in LOGGED_OUT}}
    out = tmp_path / "meta.jsonl"
    out.write_text(json.dumps(base) + "\n" + json.dumps(init) + "\n")
    argv = [sys.executable, str(SCRIPT), "--families", "dann-msda", "--targets", "sketch", "--seeds", "0", "--out", str(out),
            "--data-root", str(tmp_path / "no-data"), "--tracking-uri", f"sqlite:///{tmp_path / 'db.sqlite'}", "--plan"]
    fine = subprocess.run(argv + ["--arms", "base"], capture_output=True, text=True, timeout=300)
    assert fine.returncode == 0 and fine.stdout == "", fine.stderr
    stale = subprocess.run(argv + ["--arms", "base,init"], capture_output=True, text=True, timeout=300)
    assert stale.returncode != 0
    assert "the finished dann-msda init sketch s0 row ran another configuration than the arm gives now (steps 300 -> 600)" in stale.stderr
    assert len(out.read_text().splitlines()) == 2
