"""benchmarks/accuracy/recipe_grid.py --until: a grid started late in a session starts no job it cannot finish."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy" / "recipe_grid.py"


def test_until_skips_a_job_expected_to_run_past_it_and_keeps_the_finished_rows(tmp_path):
    out = tmp_path / "erm.jsonl"
    finished = {"recipe": "default", "base": "erm", "meta": "none", "protocol": "default", "target": "art_painting", "seed": 0,
                "test_acc": 0.82, "seconds": 40 * 60.0}
    out.write_text(json.dumps(finished) + "\n")
    until = time.strftime("%H:%M", time.localtime(time.time() + 20 * 60))
    # started, the sketch job would fail fast on the missing data root; expected at 50 minutes, it must not start
    proc = subprocess.run([sys.executable, str(SCRIPT), "--recipes", "default", "--targets", "art_painting,sketch", "--seeds", "0",
                           "--out", str(out), "--data-root", str(tmp_path / "no-data"), "--until", until,
                           "--tracking-uri", f"sqlite:///{tmp_path / 'db.sqlite'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "default erm+none sketch s0: not started, its expected 50 minutes would run past --until" in proc.stdout
    assert [json.loads(line) for line in out.read_text().splitlines()] == [finished]


def test_until_without_a_deadline_margin_runs_the_job(tmp_path):
    out = tmp_path / "erm.jsonl"
    far = time.strftime("%H:%M", time.localtime(time.time() - 60))  # the next such time is almost a day away
    proc = subprocess.run([sys.executable, str(SCRIPT), "--recipes", "default", "--targets", "sketch", "--seeds", "0",
                           "--out", str(out), "--data-root", str(tmp_path / "no-data"), "--until", far,
                           "--tracking-uri", f"sqlite:///{tmp_path / 'db.sqlite'}"], capture_output=True, text=True, timeout=300)
    # the job started (and failed on the missing data): --until only holds back jobs that cannot finish
    assert proc.returncode != 0
    assert "job default sketch s0 failed" in proc.stderr
    assert not out.exists() or out.read_text() == ""


def test_paired_lines_give_a_ci_only_where_there_are_two_pairs_or_more():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_grid", SCRIPT)
    recipe_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_grid)

    def row(base, target, acc):
        return {"recipe": "default", "base": base, "meta": "none", "protocol": "default", "target": target, "seed": 0, "test_acc": acc}

    rows = [row("erm", "art_painting", 0.80), row("mcd", "art_painting", 0.85),
            row("erm", "sketch", 0.70), row("dann", "sketch", 0.72), row("erm", "art_painting", 0.80) | {"seed": 1},
            row("dann", "art_painting", 0.81) | {"seed": 1}]
    lines = recipe_grid.paired(rows, "base=erm").splitlines()
    assert lines[1] == "default/mcd/none/default - base=erm: +5.0 points test_acc (paired, n = 1)"
    assert lines[0].startswith("default/dann/none/default - base=erm: +1.5 ± ") and "(paired, n = 2, detectable" in lines[0]
    assert "nan" not in "".join(lines)


def test_plan_lists_the_unfinished_jobs_with_their_median_minutes_and_runs_none(tmp_path):
    out = tmp_path / "dann_dg.jsonl"
    sibling = tmp_path / "dann_msda.jsonl"  # the same learner's default-recipe runs in another table
    sibling.write_text("".join(json.dumps({"recipe": "default", "base": "dann", "meta": "none", "protocol": "default",
                                           "target": t, "seed": 0, "seconds": m * 60.0}) + "\n" for t, m in (("a", 10), ("b", 30), ("c", 20))))
    argv = [sys.executable, str(SCRIPT), "--recipes", "default", "--base", "dann", "--protocol", "dg", "--targets", "art_painting,sketch",
            "--seeds", "0", "--out", str(out), "--data-root", str(tmp_path / "no-data"), "--plan"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # no run of its own yet: the sibling's median; nothing trained, nothing written
    assert proc.stdout.splitlines() == [f"plan   20.0 dann_dg.jsonl: default dann+none {t} s0" for t in ("art_painting", "sketch")]
    assert not out.exists()
    out.write_text(json.dumps({"recipe": "default", "base": "dann", "meta": "none", "protocol": "dg", "target": "art_painting",
                               "seed": 0, "seconds": 40 * 60.0}) + "\n")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.stdout.splitlines() == ["plan   40.0 dann_dg.jsonl: default dann+none sketch s0"]  # its own runs come first
    other = subprocess.run(argv[:-1] + ["--base", "jigen", "--out", str(tmp_path / "jigen.jsonl"), "--plan"], capture_output=True, text=True, timeout=300)
    assert other.stdout.splitlines()[0].endswith("art_painting s0  (no finished run of this kind: minutes assumed)")
    assert "70.0" in other.stdout.splitlines()[0]


def test_a_scripts_plan_counts_each_job_once_and_no_reused_arm_as_a_run(tmp_path):
    lines = ["plan   20.0 a.jsonl: default erm+none art_painting s0",
             "plan    0.0 dann-msda base art_painting s0: reused from a.jsonl",
             "plan   70.0 b.jsonl: default jigen+none art_painting s0  (no finished run of this kind: minutes assumed)",
             "plan   20.0 a.jsonl: default erm+none art_painting s0",  # the seeds-0,1,2 pass lists seed 0 again
             "plan   40.0 a.jsonl: default erm+none art_painting s1"]
    planned = tmp_path / "planned.txt"
    planned.write_text("\n".join(lines) + "\n")
    done = subprocess.run(["awk", "-f", str(SCRIPT.parent / "plan_total.awk"), str(planned)], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == lines[:3] + lines[4:] + [
        "total: 3 runs, 2.2 hours at the median minutes of finished runs of their kind (1 of them assumed: no finished run of their kind)"]


def test_every_recipe_is_a_valid_run_configuration_that_differs_from_the_default():
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_grid", SCRIPT)
    recipe_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_grid)
    args = argparse.Namespace(dataset="pacs", data_root="/data", tracking_uri="sqlite:///x.db", experiment="grid")
    default = recipe_grid.job_config(args, "default", "erm", "none", None, "sketch", 0, []).validate().to_dict()
    for name in recipe_grid.RECIPES:
        config = recipe_grid.job_config(args, name, "erm", "none", None, "sketch", 0, []).validate().to_dict()
        changed = {k for k in config if config[k] != default[k]}
        if name in ("default", "no-average"):  # no-average names the default explicitly
            assert changed == set(), name
        else:
            assert changed, f"recipe {name} changes nothing"
    batch32 = recipe_grid.job_config(args, "batch32", "erm", "none", None, "sketch", 0, []).validate()
    # the same images seen and the same evaluation points as the default
    assert batch32.batch_size * batch32.steps == 16 * 600 and batch32.steps // batch32.eval_every == 600 // 60


def test_a_finished_row_that_ran_another_configuration_than_its_recipe_gives_now_stops_the_grid(tmp_path):
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_grid", SCRIPT)
    recipe_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_grid)
    args = argparse.Namespace(dataset="pacs", data_root=str(tmp_path / "no-data"), tracking_uri="sqlite:///x.db", experiment="grid")
    wanted = recipe_grid.job_config(args, "default", "erm", "none", None, "sketch", 0, [])
    logged = {k: v for k, v in wanted.to_dict().items() if k not in ("data_root", "tracking_uri", "resume", "quiet")}
    row = {"recipe": "default", "base": "erm", "meta": "none", "protocol": "default", "target": "sketch", "seed": 0,
           "test_acc": 0.8, "live_test_acc": 0.8, "seconds": 60.0, "config": logged,
           "hparams_resolved": recipe_grid.resolved_hparams(wanted)}
    assert recipe_grid.stale_fields(row, wanted) == []
    # a swad run trained what --average none selects from (its live checkpoint): the same job
    assert recipe_grid.stale_fields({**row, "config": {**logged, "average": "swad"}}, wanted) == []
    assert recipe_grid.stale_fields({**row, "config": {**logged, "average": "swad"}, "live_test_acc": None}, wanted) == ["average 'swad' -> 'none'"]
    # a registry default that moved since the row ran (only rows recording every hyperparameter can tell)
    moved = {**row["hparams_resolved"], "lr": 1.0}
    assert recipe_grid.stale_fields({**row, "hparams_resolved": moved}, wanted) == [f"lr 1.0 -> {row['hparams_resolved']['lr']!r}"]
    out = tmp_path / "erm.jsonl"
    old_default = {**row, "config": {**logged, "steps": 300}}
    out.write_text(json.dumps(old_default) + "\n")
    argv = [sys.executable, str(SCRIPT), "--recipes", "default", "--targets", "sketch", "--seeds", "0", "--out", str(out),
            "--data-root", str(tmp_path / "no-data"), "--tracking-uri", f"sqlite:///{tmp_path / 'db.sqlite'}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "ran another configuration than recipe 'default' gives now (steps 300 -> 600)" in proc.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == [old_default]  # nothing rerun, nothing lost
    out.write_text(json.dumps(row) + "\n")
    proc = subprocess.run(argv + ["--plan"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr  # the matching row counts as done


def test_ablation_table_pairs_each_lever_with_the_default_on_shared_cells_and_reports_its_speed(tmp_path):
    def row(recipe, target, seed, acc, speed, seconds=600.0):
        return {"recipe": recipe, "base": "erm", "meta": "none", "protocol": "default", "target": target, "seed": seed,
                "test_acc": acc, "live_test_acc": acc, "images_per_second": speed, "seconds": seconds}

    files = {"erm.jsonl": [row("default", "art_painting", 0, 0.80, 30.0), row("default", "sketch", 0, 0.70, 30.0),
                           row("default", "sketch", 1, 0.75, 30.0)],
             "ablation.jsonl": [row("train224", "art_painting", 0, 0.83, 15.0), row("train224", "sketch", 0, 0.69, 20.0),
                                row("sgd", "art_painting", 0, 0.60, 30.0, seconds=1200.0), row("freeze0", "photo", 0, 0.9, 30.0)]}
    for name, rows in files.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--table", str(tmp_path / "erm.jsonl"), str(tmp_path / "ablation.jsonl"),
                           "--ablation", "--metric", "live_test_acc"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout[proc.stdout.index("| recipe | changes |"):].splitlines()
    assert table[0] == "| recipe | changes | art_painting s0 | sketch s0 | mean difference | training speed vs default | minutes/run |"
    assert table[2] == "| default | (the defaults) | 80.00 | 70.00 | | 1.00x | 10.0 |"
    assert table[3] == "| train224 | train_image_size=224 | 83.00 (+3.00) | 69.00 (-1.00) | +1.00 (n = 2) | 0.58x | 10.0 |"
    assert table[4] == "| sgd | optimizer=sgd, lr=0.01 | 60.00 (-20.00) | - | -20.00 (n = 1) | 1.00x | 20.0 |"
    assert len(table) == 5  # freeze0 shares no cell with the default: no line
