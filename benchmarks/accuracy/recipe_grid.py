"""Recipes x PACS targets x seeds, one (recipe, target, seed) job per child process, resumable.

Each finished job appends one JSON line to ``--out`` (target, seed, test_acc, the best live
checkpoint's test_acc, val_acc, seconds, peak RSS, MLflow run id) as soon as it lands; a restarted
grid skips the jobs already there and continues an interrupted one from its checkpoint
(``--resume auto``). ``--table`` renders the file as Markdown (mean ± 95% CI over seeds, t
distribution) and prints paired differences between recipes on shared (target, seed) pairs.

    python benchmarks/accuracy/recipe_grid.py --recipes default --targets art_painting,cartoon,photo,sketch \\
        --seeds 0,1,2 --out benchmarks/results/accuracy/erm_default.jsonl
    python benchmarks/accuracy/recipe_grid.py --table benchmarks/results/accuracy/erm_default.jsonl

Recipes are named sets of `dgmeta run` options (``RECIPES`` below); ``--base``/``--protocol``/``--meta``
and ``--set key=value`` apply to all of them.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dgmeta.process import tune_process

# an entry point: passive OpenMP waiting before anything loads torch (benchmarks/README.md, "Shared CPUs")
tune_process(sys.argv[1:])

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: the defaults before issue 15 (SGD 0.01, heads x10, batch norm and every layer trained, 128 px)
OLD = {"steps": 300, "batch_size": 32, "image_size": 128, "eval_every": 100, "average": "none",
       "hparams": {"optimizer": "sgd", "lr": 0.01, "freeze_bn": False, "freeze_levels": 0}}
RECIPES: dict[str, dict] = {
    "old-defaults": OLD,
    # the RunConfig / hparams defaults as they stand (nothing overridden)
    "default": {},
    "no-average": {"average": "none"},
    "ema": {"average": "ema"},
    "swad": {"average": "swad"},
    "train224": {"train_image_size": 224},
    # the default's training resolution, tested at it too: separates FixRes's test-time upscaling from
    # the training resolution itself (train224 changes both)
    "res176": {"image_size": 176, "train_image_size": 176},
    # train224 for two thirds of the steps: its runs selected steps 420-540 of 600 by source
    # validation, so a shorter schedule at 224 px may keep the gain in less time than the default takes
    "train224-400": {"train_image_size": 224, "steps": 400, "eval_every": 40},
    "freeze0": {"hparams": {"freeze_levels": 0}},
    "bn-trained": {"hparams": {"freeze_bn": False}},
    "sgd": {"hparams": {"optimizer": "sgd", "lr": 0.01}},
    "lr3e-4": {"hparams": {"lr": 3e-4}},
    "lr5e-5": {"hparams": {"lr": 5e-5}},
    "lp-ft": {"hparams": {"head_init": "probe"}},
    # the larger ImageNet backbone that ships offline (Lite1, 240 px native), same resolutions and steps
    "lite1": {"backbone": "tf_efficientnet_lite1"},
    # twice the batch for half the steps: the same images seen, the same evaluation points
    "batch32": {"batch_size": 32, "steps": 300, "eval_every": 30},
    # half the budget: where the accuracy-vs-compute curve says the default has already plateaued
    "steps300": {"steps": 300, "eval_every": 30},
}


def job_key(row: dict) -> tuple:
    return (row["recipe"], row["base"], row["meta"], row["protocol"], row["target"], int(row["seed"]))


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill mid-write: that job reruns
                continue
    return rows


#: minutes assumed for a job of a kind not run yet (a Feature-Critic run, the slowest kind, took 66)
UNKNOWN_JOB_MINUTES = 70.0


def expected_minutes(seconds: list[float]) -> float:
    """Wall minutes to expect from one more job like these finished ones: their median plus 25%, since
    a run that shares the cores with other work slows down and a job cut at a deadline loses its work."""
    return 1.25 * statistics.median(seconds) / 60 if seconds else UNKNOWN_JOB_MINUTES


def similar_seconds(out: Path, recipe: str, base: str) -> list[float]:
    """Wall seconds of the finished runs most like the next job of ``out``'s grid: that file's runs of
    the recipe, else any of that file's runs, else the default recipe's runs of the same learner in the
    other result files beside it (a new table, e.g. DANN under dg, before its first run)."""
    finished = read_rows(out)
    for same in (lambda r: r["recipe"] == recipe, lambda r: True):
        seconds = [r["seconds"] for r in finished if same(r)]
        if seconds:
            return seconds
    siblings = sorted(p for p in out.parent.glob("*.jsonl") if p != out)
    return [r["seconds"] for p in siblings for r in read_rows(p) if r.get("recipe") == "default" and r.get("base") == base and "seconds" in r]


def plan_line(minutes: float, known: bool, job: str) -> str:
    """One line of ``--plan``: ``plan <minutes> <job>``, the minutes a finished run of the kind took (median;
    no deadline margin) or, with none finished, UNKNOWN_JOB_MINUTES marked as assumed."""
    return f"plan {minutes:6.1f} {job}" + ("" if known else "  (no finished run of this kind: minutes assumed)")


def plan_minutes(seconds: list[float]) -> tuple[float, bool]:
    return (statistics.median(seconds) / 60, True) if seconds else (UNKNOWN_JOB_MINUTES, False)


def deadline_of(until: str, now: float) -> float:
    """``--until HH:MM`` (local time) as a timestamp: the next such moment after ``now``."""
    try:
        hour, minute = (int(part) for part in until.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError(until)
        moment = time.localtime(now)
        deadline = time.mktime((moment.tm_year, moment.tm_mon, moment.tm_mday, hour, minute, 0, 0, 0, -1))
    except ValueError:
        raise SystemExit(f"--until {until!r}: give a local time as HH:MM, e.g. --until 23:30")
    return deadline if deadline > now else deadline + 24 * 3600


def job_config(args, recipe_name: str, base: str, meta: str, protocol: str | None, target: str, seed: int, sets: list[str]):
    """The RunConfig of one grid job: the recipe, the grid's overrides (``args.steps``, ``image_size``,
    ``eval_every``, ``test_every_eval``) and the ``--set`` items; shared with meta_grid.py, whose
    ``--base-from`` compares it with a logged run's configuration."""
    from dgmeta.runs.config import RunConfig

    recipe = json.loads(json.dumps(RECIPES[recipe_name]))
    hparams = recipe.pop("hparams", {})
    if getattr(args, "test_every_eval", False):  # a curve: the target at every evaluation (not hashed: same training)
        recipe["test_every_eval"] = True
    for key in ("steps", "image_size", "eval_every"):  # smoke tests of the grid itself; evaluation interval
        if getattr(args, key, None):
            recipe[key] = getattr(args, key)
    hparams.update(dict(item.split("=", 1) for item in sets))
    return RunConfig(
        dataset=args.dataset, data_root=args.data_root, base=base, meta=meta, protocol=protocol,
        targets=[target], seeds=[seed], tracking_uri=args.tracking_uri, experiment=args.experiment,
        quiet=True, resume="auto", hparams=hparams, **recipe,
    )


#: RunConfig keys that do not change what a run trains (where it logs, how it resumes, which device it
#: runs on: rows written before ``device`` existed lack it)
UNTRAINED_KEYS = ("data_root", "tracking_uri", "resume", "quiet", "experiment", "run_name", "device")


def resolved_config(config: dict) -> dict:
    """A logged or planned RunConfig as what it trains: the untrained keys dropped, no ``--protocol``
    resolved to the learner's own."""
    from dgmeta.learners import learner_class

    resolved = {k: v for k, v in config.items() if k not in UNTRAINED_KEYS}
    if resolved.get("base"):
        resolved["protocol"] = config.get("protocol") or learner_class(config["base"]).default_protocol
    return resolved


def resolved_hparams(config) -> dict:
    """Every hyperparameter a job runs with: the registry's defaults under the job's overrides."""
    from dgmeta.hparams import apply_overrides, default_hparams

    return apply_overrides(default_hparams(config.base, config.meta), config.hparams)


def stale_fields(row: dict, wanted, ignore: tuple[str, ...] = ()) -> list[str]:
    """How a finished row's run differs from the job its key names today (``"steps 600 -> 400"``); empty
    if it is that job. A changed default would otherwise leave rows of the old recipe counted as done
    under the recipe's name. Only what both sides record is compared (a row from before a key existed is
    trusted on it); ``--average swad|ema`` rows stand for ``--average none`` through their live
    checkpoint, the same training; ``ignore``: hyperparameters that differ by design (a temp-file path)."""
    logged = resolved_config(row.get("config") or {})
    now = {k: v for k, v in resolved_config(wanted.to_dict()).items() if k != "hparams"}
    if now.get("average") == "none" and row.get("live_test_acc") is not None:
        now.pop("average")
    diffs = [f"{k} {logged[k]!r} -> {v!r}" for k, v in now.items() if k in logged and logged[k] != v]
    if "hparams_resolved" in row:
        then, hparams = row["hparams_resolved"], resolved_hparams(wanted)
    else:
        then, hparams = logged.get("hparams", {}), wanted.hparams
    diffs += [f"{k} {then[k]!r} -> {v!r}" for k, v in hparams.items() if k in then and k not in ignore and then[k] != v]
    return diffs


def run_one(args) -> None:
    """Child process: one job; prints its result as the last JSON line."""
    from dgmeta.runs.experiment import run_experiment

    config = job_config(args, args.recipe, args.base, args.meta, args.protocol, args.target, args.seed, args.set)
    started = time.time()
    result = run_experiment(config)
    run = result.runs[0]
    curve = curve_points(config.tracking_uri, run.run_id) if args.test_every_eval else None
    meta_summaries = {field: metric_summary(config.tracking_uri, run.run_id, key) for field, key in META_SUMMARIES.items()}
    print(json.dumps({
        "test_acc": run.test_acc, "live_test_acc": run.live_test_acc, "val_acc": run.val_acc,
        "oracle_test_acc": None if math.isnan(run.oracle_test_acc) else run.oracle_test_acc,
        "selected_step": run.selected_step, "seconds": time.time() - started,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "images_per_second": run.images_per_second, "run_id": run.run_id,
        "config": {k: v for k, v in config.to_dict().items() if k not in ("data_root", "tracking_uri", "resume", "quiet")},
        "hparams_resolved": resolved_hparams(config),
        **({"curve": curve} if curve is not None else {}),
        **{field: summary for field, summary in meta_summaries.items() if summary is not None},
    }))


#: per step, the meta term's gradient length relative to the base gradient's (meta wrappers log it)
META_SHARE_METRIC = "train.meta/added_to_base_norm"
#: row field -> logged meta metric summarised into it: the term's share of the step, and its meta-test
#: loss (near zero when the meta-test set is already fit, e.g. labelled target shots the base step trains on);
#: for Feature-Critic its auxiliary loss h (whether the critic flattens itself out) and its meta-objective
META_SUMMARIES = {"meta_added_to_base_norm": META_SHARE_METRIC, "meta_val_loss": "train.meta/val_loss",
                  "critic_aux_loss": "train.critic/aux_loss", "critic_meta_loss": "train.critic/meta_loss"}


def metric_summary(tracking_uri: str, run_id: str, key: str) -> dict | None:
    """Median, upper quartile and maximum of one logged metric over a run's steps, and its mean over the
    first and the last tenth of them (whether it dies out); None if not logged."""
    from mlflow.tracking import MlflowClient

    history = sorted(MlflowClient(tracking_uri).get_metric_history(run_id, key), key=lambda m: m.step)
    if not history:
        return None
    tenth = max(1, len(history) // 10)
    values = sorted(m.value for m in history)
    return {"median": statistics.median(values), "q75": values[(3 * (len(values) - 1)) // 4], "max": values[-1], "steps": len(values),
            "first_tenth": statistics.fmean(m.value for m in history[:tenth]),
            "last_tenth": statistics.fmean(m.value for m in history[-tenth:])}


def curve_points(tracking_uri: str, run_id: str) -> list[dict]:
    """Every evaluation of a run: step, training seconds so far, target test accuracy, weights."""
    import tempfile

    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        path = MlflowClient(tracking_uri).download_artifacts(run_id, "results.json", tmp)
        checkpoints = json.loads(Path(path).read_text())["checkpoints"]
    return [{"step": c["step"], "train_seconds": c["train_seconds"], "test_acc": next(iter(c["test"].values())),
             "val_acc": c["val_mean"], "weights": c["weights"]} for c in checkpoints if c["test"]]


def run_grid(args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    finished = {job_key(r): r for r in read_rows(out)}
    for recipe in args.recipes.split(","):
        if recipe not in RECIPES:
            raise SystemExit(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    jobs = [(r, t, int(s)) for s in args.seeds.split(",") for t in args.targets.split(",") for r in args.recipes.split(",")]
    done = set()
    for recipe, target, seed in jobs:  # all checked before anything runs
        key = (recipe, args.base, args.meta, args.protocol or "default", target, seed)
        if key in finished:
            stale = stale_fields(finished[key], job_config(args, recipe, args.base, args.meta, args.protocol, target, seed, args.set))
            if stale:
                raise SystemExit(
                    f"{out}: the finished {recipe} {args.base}+{args.meta} {target} s{seed} row ran another configuration than "
                    f"recipe {recipe!r} gives now ({'; '.join(stale)}); rename that row's recipe to what it ran, or move it "
                    "to another file, and rerun")
            done.add(key)
    deadline = deadline_of(args.until, time.time()) if args.until else None
    for recipe, target, seed in jobs:
        row = {"recipe": recipe, "base": args.base, "meta": args.meta, "protocol": args.protocol or "default", "target": target, "seed": seed}
        if job_key(row) in done:
            continue
        seconds = similar_seconds(out, recipe, args.base)
        if args.plan:
            print(plan_line(*plan_minutes(seconds), f"{Path(args.out).name}: {recipe} {args.base}+{args.meta} {target} s{seed}"))
            continue
        if deadline is not None:
            minutes = expected_minutes(seconds)
            if time.time() + 60 * minutes > deadline:
                print(f"[{time.strftime('%H:%M:%S')}] {recipe} {args.base}+{args.meta} {target} s{seed}: not started, its expected "
                      f"{minutes:.0f} minutes would run past --until {args.until}", flush=True)
                continue
        cmd = [sys.executable, __file__, "--one", "--recipe", recipe, "--target", target, "--seed", str(seed),
               "--base", args.base, "--meta", args.meta, "--data-root", args.data_root,
               "--tracking-uri", args.tracking_uri, "--experiment", args.experiment]
        cmd += ["--protocol", args.protocol] if args.protocol else []
        cmd += ["--test-every-eval"] if args.test_every_eval else []
        cmd += ["--eval-every", str(args.eval_every)] if args.eval_every else []
        cmd += ["--dataset", args.dataset]
        for key in ("steps", "image_size"):
            if getattr(args, key):
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        for item in args.set:
            cmd += ["--set", item]
        print(f"[{time.strftime('%H:%M:%S')}] {recipe} {args.base}+{args.meta} {target} s{seed} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"job {recipe} {target} s{seed} failed (exit {proc.returncode}); finished rows are kept in {out}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(result)
        row["set"] = args.set
        with out.open("a") as f:  # one line per finished job: a kill loses at most the running job
            f.write(json.dumps(row) + "\n")
        print(f"    test_acc {row['test_acc'] * 100:.2f} (live {row['live_test_acc'] * 100:.2f}) in {row['seconds']:.0f}s, peak {row['peak_rss_gib']:.2f} GiB", flush=True)


def ci95(values: list[float]) -> float:
    from scipy import stats

    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def render(rows: list[dict], metric: str = "test_acc") -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["base"], r["meta"], r["protocol"]), []).append(r)
    targets = sorted({r["target"] for r in rows})
    lines = ["| recipe | base | meta | protocol | " + " | ".join(targets) + " | avg | minutes/run |",
             "|---|---|---|---|" + "---|" * (len(targets) + 2)]
    for (recipe, base, meta, protocol), items in groups.items():
        cells = []
        per_seed: dict[int, list[float]] = {}
        for t in targets:
            acc = [100 * r[metric] for r in items if r["target"] == t]
            for r in items:
                if r["target"] == t:
                    per_seed.setdefault(r["seed"], []).append(100 * r[metric])
            cells.append("" if not acc else f"{sum(acc) / len(acc):.1f}" + (f" ± {ci95(acc):.1f}" if len(acc) > 1 else ""))
        full = [sum(v) / len(v) for v in per_seed.values() if len(v) == len(targets)]
        avg = f"{sum(full) / len(full):.1f}" + (f" ± {ci95(full):.1f}" if len(full) > 1 else "") if full else ""
        minutes = sum(r["seconds"] for r in items) / len(items) / 60
        lines.append(f"| {recipe} | {base} | {meta} | {protocol} | " + " | ".join(cells) + f" | {avg} | {minutes:.1f} |")
    return "\n".join(lines)


def paired(rows: list[dict], reference: str, metric: str = "test_acc") -> str:
    """Each group against the reference on shared (target, seed) pairs. ``reference`` is a recipe
    name or ``field=value`` (``base=erm``: every other base against ERM's runs)."""
    from scipy import stats

    field, _, value = reference.rpartition("=")
    field = field or "recipe"
    fields = ("recipe", "base", "meta", "protocol")
    refs = {(r["target"], r["seed"]): r for r in rows if str(r[field]) == value}
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        ref = refs.get((r["target"], r["seed"]))
        if str(r[field]) != value and ref is not None:
            groups.setdefault(tuple(r[f] for f in fields), []).append(100 * (r[metric] - ref[metric]))
    out = []
    for group, diffs in sorted(groups.items()):
        n = len(diffs)
        mean = sum(diffs) / n
        detectable = ""
        if n > 1:
            sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
            # smallest true mean difference a two-sided paired t-test at 5% finds with 80% power
            mde = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
            detectable = f", detectable at 80% power: {mde:.1f}"
        label = "/".join(str(g) for g in group)
        spread = f" ± {ci95(diffs):.1f}" if n > 1 else ""  # one pair has no CI
        out.append(f"{label} - {reference}: {mean:+.1f}{spread} points {metric} (paired, n = {n}{detectable})")
    return "\n".join(out)


def recipe_changes(name: str) -> str:
    """What a recipe sets against the defaults, as ``key=value`` items (hparams flattened)."""
    recipe = dict(RECIPES.get(name, {}))
    items = dict(recipe.pop("hparams", {}), **recipe)
    return ", ".join(f"{k}={v}" for k, v in items.items())


def ablation(rows: list[dict], reference: str = "default", metric: str = "test_acc") -> str:
    """One line per recipe against ``reference`` on the (target, seed) cells both ran: each cell's
    accuracy and its difference, the mean difference, and the training speed relative to the
    reference (median over those cells of the ratio of labelled images per training second)."""
    refs = {(r["target"], r["seed"]): r for r in rows if r["recipe"] == reference}
    recipes = list(dict.fromkeys(r["recipe"] for r in rows if r["recipe"] != reference))
    cells = sorted({(r["target"], r["seed"]) for r in rows if r["recipe"] in recipes and (r["target"], r["seed"]) in refs})
    if not cells:
        return f"no recipe shares a (target, seed) cell with {reference!r}"
    head = " | ".join(f"{t} s{s}" for t, s in cells)
    base = " | ".join(f"{100 * refs[c][metric]:.2f}" for c in cells)
    lines = [f"| recipe | changes | {head} | mean difference | training speed vs {reference} | minutes/run |",
             "|---|---|" + "---|" * len(cells) + "---|---|---|",
             f"| {reference} | (the defaults) | {base} | | 1.00x | {statistics.median(refs[c]['seconds'] for c in cells) / 60:.1f} |"]
    for recipe in recipes:
        mine = {(r["target"], r["seed"]): r for r in rows if r["recipe"] == recipe}
        shared = [c for c in cells if c in mine]
        if not shared:
            continue
        diffs = {c: 100 * (mine[c][metric] - refs[c][metric]) for c in shared}
        row = [f"{100 * mine[c][metric]:.2f} ({diffs[c]:+.2f})" if c in mine else "-" for c in cells]
        speeds = [mine[c]["images_per_second"] / refs[c]["images_per_second"] for c in shared
                  if mine[c].get("images_per_second") and refs[c].get("images_per_second")]
        speed = f"{statistics.median(speeds):.2f}x" if speeds else ""
        minutes = statistics.median(mine[c]["seconds"] for c in shared) / 60
        lines.append(f"| {recipe} | {recipe_changes(recipe)} | " + " | ".join(row)
                     + f" | {statistics.fmean(diffs.values()):+.2f} (n = {len(diffs)}) | {speed} | {minutes:.1f} |")
    return "\n".join(lines)


def averaging_gain(rows: list[dict]) -> str:
    """The averaged model (``test_acc``) against the best live checkpoint of the same run."""
    diffs = [100 * (r["test_acc"] - r["live_test_acc"]) for r in rows if r["config"].get("average", "none") != "none"]
    if not diffs:
        return "no run with --average swad|ema in these files"
    spread = f" ± {ci95(diffs):.2f}" if len(diffs) > 1 else ""
    return f"averaged - best live checkpoint: {sum(diffs) / len(diffs):+.2f}{spread} points (paired, n = {len(diffs)})"


def seed_noise(rows: list[dict], metric: str = "test_acc", pairs: tuple[int, ...] = (4, 8, 12, 24)) -> str:
    """What a paired experiment on this recipe can detect if seeds were its only noise: the pooled
    within-(group, target) seed standard deviation, and for n pairs the 80%-power minimum detectable
    effect of a two-sided paired t-test at 5% (a pair's difference has sqrt(2) x that sd). A real
    comparison also carries how its effect varies across targets, so this is a lower bound."""
    from scipy import stats

    cells: dict[tuple, list[float]] = {}
    for r in rows:
        cells.setdefault((r["recipe"], r["base"], r["meta"], r["protocol"], r["target"]), []).append(100 * r[metric])
    squares = sum(sum((v - sum(vs) / len(vs)) ** 2 for v in vs) for vs in cells.values())
    dof = sum(len(vs) - 1 for vs in cells.values())
    if dof < 1:
        return "seed noise: no (group, target) cell has two seeds"
    sd = math.sqrt(squares / dof)
    mdes = ", ".join(f"{n} pairs {(stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * math.sqrt(2) * sd / math.sqrt(n):.2f}" for n in pairs)
    return f"seed noise: pooled sd {sd:.2f} points over {dof} degrees of freedom; detectable at 80% power if seeds were the only noise: {mdes}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="default")
    parser.add_argument("--targets", default="art_painting,cartoon,photo,sketch")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--base", default="erm")
    parser.add_argument("--meta", default="none")
    parser.add_argument("--protocol", default=None)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'benchmarks' / 'results' / 'accuracy.db'}")
    parser.add_argument("--experiment", default="benchmarks-accuracy")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy" / "grid.jsonl"))
    parser.add_argument("--dataset", default="pacs")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps (smoke tests)")
    parser.add_argument("--image-size", type=int, default=None, help="override the recipe's image size (smoke tests)")
    parser.add_argument("--test-every-eval", action="store_true", help="score the target at every evaluation (curves)")
    parser.add_argument("--eval-every", type=int, default=None, help="override the recipe's evaluation interval")
    parser.add_argument("--until", default=None, metavar="HH:MM",
                        help="start no job that would not finish by this local time (expected_minutes of the like finished "
                             "runs, similar_seconds): a session can end without a half-trained job")
    parser.add_argument("--plan", action="store_true",
                        help="list the jobs not finished yet with their expected minutes (plan_line), and run none")
    parser.add_argument("--table", nargs="*", default=None, help="render these result files instead of running")
    parser.add_argument("--reference", default=None, help="in --table, pair the others against this recipe, or field=value (base=erm)")
    parser.add_argument("--metric", default="test_acc", choices=("test_acc", "live_test_acc"),
                        help="in --table: the reported model (test_acc) or the best live checkpoint (live_test_acc)")
    parser.add_argument("--averaging-gain", action="store_true", help="in --table: what --average swad|ema added per run")
    parser.add_argument("--ablation", action="store_true",
                        help="in --table: each recipe's cells against --reference (default: the default recipe), with training speed")
    parser.add_argument("--seed-noise", action="store_true", help="in --table: seed-to-seed sd and the effect n pairs could detect")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args)
    elif args.table is not None:
        rows = [r for path in args.table for r in read_rows(Path(path))]
        print(render(rows, args.metric))
        if args.ablation:
            print(ablation(rows, args.reference or "default", args.metric))
        elif args.reference:
            print(paired(rows, args.reference, args.metric))
        if args.averaging_gain:
            print(averaging_gain(rows))
        if args.seed_noise:
            print(seed_noise(rows, args.metric))
    else:
        run_grid(args)


if __name__ == "__main__":
    main()
