"""The paired meta experiment of issue 17: each meta wrapper against the same learner without meta,
with its controls, on the accuracy recipe (the RunConfig defaults), over targets x seeds.

Families (learner, protocol, wrapper) and their arms::

    dann-msda  / mcd-msda:  base (meta none) | init | init-inner0 (--set inner_lr=0: the extra
                            supervised term, no meta-learning) | base-lr (the base learner at
                            lr x (1 + meta_weight): the meta term's added step, upper bound)
    mme-ssda:               the same four arms, MME under ssda with --shots 3; init uses MetaDA's
                            SSDA episode (meta_episode=target_shots)
    erm-dg-critic:          base | critic | critic-warm (critic started from this grid's ERM base
                            model of the same target and seed, as the official code starts from a
                            converged baseline; trains the full budget again on top)
    optional (only with --arms): init-shots-meta (mme-ssda: the target shots only in the meta-test term,
                            --set meta_shots_in_base=false; an extension, not the paper's episode);
                            init-all (the meta term averaged over every held-out split each step,
                            --set meta_splits=all; the default takes one split a step)

The base-lr control: under SGD the online meta term lengthens each step by at most ``meta_weight``
x the base gradient (when aligned), so ``lr x (1 + meta_weight)`` matches its largest added step;
under AdamW (the recipe) steps are normalised and the control bounds the effect of a larger step
size instead. The runs log ``meta/added_to_base_norm`` (the meta term's length relative to the base
gradient) so the match can be checked per run.

Each job runs in a child process through ``recipe_grid.run_one`` (checkpointed, ``--resume auto``)
and appends one JSON line to ``--out`` when it finishes; a restarted grid skips finished jobs.
``--base-from FILE`` (a ``recipe_grid.py`` result file, e.g. ``dann_msda_default.jsonl``) takes a base
arm's row from that file instead of training it again when the row's logged run configuration is
exactly the one the base arm would run (same recipe, learner, protocol, budget, hyperparameters;
no ``--set``); the copied row says ``reused_from``. A run made with ``--average swad|ema`` stands in for
an ``--average none`` base arm through its best live checkpoint (``live_test_acc``; averaging does not
change the trajectory or the live selection), and the row says ``live_of_average``.
``--table`` prints the accuracy table; per family, every arm's paired difference against ``base`` on
shared (target, seed) pairs (mean ± 95% CI, t distribution) with the minimum effect a two-sided
paired t-test at 5% detects with 80% power, and ``init`` against each control; and each (target,
seed)'s accuracy per arm. ``--toward FILE`` (with ``--table``) tests whether an arm moves the base
learner toward another learner's results (e.g. ``erm_default.jsonl``: does the meta term pull DANN
toward ERM?; an averaged run counts with its live checkpoint, as ``--average none`` reports it): over
shared (target, seed) pairs, the correlation of (arm − base) with (other − base),
with its 95% CI, and the least-squares slope (the share of the gap the arm closes).

    python benchmarks/accuracy/meta_grid.py --families dann-msda,mcd-msda,mme-ssda,erm-dg-critic \\
        --seeds 0,1,2 --out benchmarks/results/accuracy/meta_grid.jsonl
    python benchmarks/accuracy/meta_grid.py --table benchmarks/results/accuracy/meta_grid.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import recipe_grid  # noqa: E402  (the grid machinery: one job per child process, JSONL rows, ci95)

FAMILIES = {
    "dann-msda": ("dann", "msda", "init"),
    "mcd-msda": ("mcd", "msda", "init"),
    "mme-ssda": ("mme", "ssda", "init"),
    "erm-dg-critic": ("erm", "dg", "critic"),
}
INIT_ARMS = ("base", "init", "init-inner0", "base-lr")
CRITIC_ARMS = ("base", "critic", "critic-warm")
#: arms run only when named in --arms: init-all averages the meta term over every held-out split each
#: step (meta_splits=all, the default before the one-split estimate; 2.2x its step time)
OPTIONAL_INIT_ARMS = ("init-all",)
#: ssda only: init-shots-meta keeps the labelled target shots out of the base step (meta_shots_in_base=false),
#: so they are seen only as the meta-test loss, which the base step otherwise memorises to ~0
OPTIONAL_SSDA_ARMS = ("init-shots-meta",)


def arms_of(family: str, optional: bool = False) -> tuple[str, ...]:
    if FAMILIES[family][2] == "critic":
        return CRITIC_ARMS
    ssda = OPTIONAL_SSDA_ARMS if FAMILIES[family][1] == "ssda" else ()
    return INIT_ARMS + ((OPTIONAL_INIT_ARMS + ssda) if optional else ())


def arm_options(family: str, arm: str) -> tuple[str, list[str]]:
    """``(--meta, --set items)`` of one arm (critic-warm's warm_start is added when it runs)."""
    from dgmeta.hparams import default_hparams

    base, protocol, _ = FAMILIES[family]
    episode = ["meta_episode=target_shots"] if protocol == "ssda" else []
    if arm == "base":
        return "none", []
    if arm == "init":
        return "init", episode
    if arm == "init-inner0":
        return "init", episode + ["inner_lr=0"]
    if arm == "init-all":
        return "init", episode + ["meta_splits=all"]
    if arm == "init-shots-meta":
        return "init", episode + ["meta_shots_in_base=false"]
    if arm == "base-lr":
        lr = default_hparams(base)["lr"] * (1 + default_hparams(base, "init")["meta_weight"])
        return "none", [f"lr={lr:g}"]
    if arm in ("critic", "critic-warm"):
        return "critic", []
    raise SystemExit(f"unknown arm {arm!r}")


def job_key(row: dict) -> tuple:
    return (row["family"], row["arm"], row["target"], int(row["seed"]))


def warm_start_file(rows: list[dict], family: str, target: str, seed: int, tracking_uri: str, folder: Path) -> str:
    """This grid's finished base model of (family, target, seed), downloaded from MLflow."""
    from mlflow.tracking import MlflowClient

    base = next((r for r in rows if job_key(r) == (family, "base", target, seed)), None)
    if base is None:
        raise SystemExit(f"critic-warm {target} s{seed} needs the base arm's run first: put base before critic-warm")
    folder.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri).download_artifacts(base["run_id"], "model/network.pt", str(folder))


def base_arm_config(args, family: str, target: str, seed: int) -> dict:
    """The configuration the base arm of (family, target, seed) runs, protocol resolved."""
    base, protocol, _ = FAMILIES[family]
    config = recipe_grid.job_config(args, "default", base, "none", protocol, target, seed, args.set).to_dict()
    return recipe_grid.resolved_config(config)


def reusable_base_row(candidates: list[tuple[str, dict]], args, family: str, target: str, seed: int) -> tuple[str, dict] | None:
    """``(file name, row)`` of a finished run of another grid that is exactly this base arm, or None."""
    wanted = base_arm_config(args, family, target, seed)
    usable = [(name, row, recipe_grid.resolved_config(row["config"])) for name, row in candidates if "config" in row and not row.get("set")]
    for name, row, config in usable:
        if config == wanted:
            return name, row
    # --average swad|ema averages beside training and after it: the trajectory and the best live checkpoint
    # (its live_test_acc) are exactly what the same run with --average none trains and selects
    for name, row, config in usable:
        if wanted.get("average") == "none" and row.get("live_test_acc") is not None and {**config, "average": "none"} == wanted:
            return name, {**row, "test_acc": row["live_test_acc"], "live_of_average": config["average"]}
    return None


def unaveraged_acc(row: dict) -> float:
    """A result row's test accuracy as ``--average none`` reports it (the best live checkpoint)."""
    averaged = row.get("config", {}).get("average", "none") != "none"
    return row["live_test_acc"] if averaged and row.get("live_test_acc") is not None else row["test_acc"]


def arm_seconds(rows: list[dict], family: str, arm: str) -> list[float]:
    """Wall seconds of this family's finished runs of the arm, else of the arm's in any family; a reused
    row's time was spent elsewhere and is left out."""
    for same in (lambda r: r["family"] == family and r["arm"] == arm, lambda r: r["arm"] == arm):
        seconds = [r["seconds"] for r in rows if same(r) and "reused_from" not in r]
        if seconds:
            return seconds
    return []


def job_minutes(rows: list[dict], family: str, arm: str) -> float:
    """Expected wall minutes of one job (``recipe_grid.expected_minutes`` of :func:`arm_seconds`)."""
    return recipe_grid.expected_minutes(arm_seconds(rows, family, arm))


def check_finished_rows(args, out: Path, jobs: list[tuple]) -> None:
    """Stop before running anything if a finished row of these jobs ran another configuration than its arm
    gives now (``recipe_grid.stale_fields``: e.g. a default changed since)."""
    finished = {job_key(r): r for r in recipe_grid.read_rows(out)}
    for family, arm, target, seed in jobs:
        row = finished.get((family, arm, target, seed))
        if row is None:
            continue
        base, protocol, _ = FAMILIES[family]
        meta, sets = arm_options(family, arm)
        wanted = recipe_grid.job_config(args, "default", base, meta, protocol, target, seed, sets + args.set)
        stale = recipe_grid.stale_fields(row, wanted, ignore=("warm_start",))
        if stale:
            raise SystemExit(f"{out}: the finished {family} {arm} {target} s{seed} row ran another configuration than the arm "
                             f"gives now ({'; '.join(stale)}); move that row to another file and rerun")


def run_grid(args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    families = args.families.split(",")
    for family in families:
        if family not in FAMILIES:
            raise SystemExit(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    wanted = set(args.arms.split(",")) if args.arms else None
    jobs = [(f, a, t, int(s)) for s in args.seeds.split(",") for t in args.targets.split(",") for f in families
            for a in arms_of(f, optional=wanted is not None) if wanted is None or a in wanted]
    known = {a for f in families for a in arms_of(f, optional=True)}
    if wanted is not None and wanted - known:
        raise SystemExit(f"--arms: unknown arm {sorted(wanted - known)[0]!r} for {args.families}; known: {', '.join(sorted(known))}")
    for path in args.base_from:
        if not Path(path).is_file():
            raise SystemExit(f"--base-from {path}: no such result file; give a recipe_grid.py --out file")
    reusable = [(Path(path).name, r) for path in args.base_from for r in recipe_grid.read_rows(Path(path))]
    deadline = recipe_grid.deadline_of(args.until, time.time()) if args.until else None
    check_finished_rows(args, out, jobs)
    for family, arm, target, seed in jobs:
        rows = recipe_grid.read_rows(out)
        if (family, arm, target, seed) in {job_key(r) for r in rows}:
            continue
        base, protocol, _ = FAMILIES[family]
        earlier = reusable_base_row(reusable, args, family, target, seed) if arm == "base" else None
        if args.plan:
            if arm == "base" and args.base_from:  # the grid scripts run the --base-from grid first
                source = earlier[0] if earlier else " or ".join(Path(p).name for p in args.base_from) + " once that grid has run it"
                print(recipe_grid.plan_line(0.0, True, f"{family} base {target} s{seed}: reused from {source}"))
            else:
                print(recipe_grid.plan_line(*recipe_grid.plan_minutes(arm_seconds(rows, family, arm)), f"{family} {arm} {target} s{seed}"))
            continue
        if earlier is not None:
            source, reused = earlier
            row = {**{k: v for k, v in reused.items() if k != "recipe"}, "family": family, "arm": arm, "base": base,
                   "meta": "none", "protocol": protocol, "target": target, "seed": seed, "set": [], "reused_from": source}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            live = f", the live checkpoint of its --average {row['live_of_average']} run" if "live_of_average" in row else ""
            print(f"[{time.strftime('%H:%M:%S')}] {family} base {target} s{seed}: reused from {source}{live} "
                  f"(test_acc {row['test_acc'] * 100:.2f})", flush=True)
            continue
        minutes = job_minutes(rows, family, arm)
        if deadline is not None and time.time() + 60 * minutes > deadline:
            print(f"[{time.strftime('%H:%M:%S')}] {family} {arm} {target} s{seed}: not started, its expected "
                  f"{minutes:.0f} minutes would run past --until {args.until}", flush=True)
            continue
        meta, sets = arm_options(family, arm)
        if arm == "critic-warm":
            folder = Path(tempfile.mkdtemp(prefix="meta-grid-warm-"))
            sets = sets + [f"warm_start={warm_start_file(rows, family, target, seed, args.tracking_uri, folder)}"]
        cmd = [sys.executable, str(HERE / "recipe_grid.py"), "--one", "--recipe", "default", "--target", target, "--seed", str(seed),
               "--base", base, "--meta", meta, "--protocol", protocol, "--dataset", args.dataset, "--data-root", args.data_root,
               "--tracking-uri", args.tracking_uri, "--experiment", args.experiment]
        for key in ("steps", "image_size", "eval_every"):
            if getattr(args, key):
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        for item in sets + args.set:
            cmd += ["--set", item]
        print(f"[{time.strftime('%H:%M:%S')}] {family} {arm} {target} s{seed} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"job {family} {arm} {target} s{seed} failed (exit {proc.returncode}); finished rows are kept in {out}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        row = {"family": family, "arm": arm, "base": base, "meta": meta, "protocol": protocol, "target": target, "seed": seed,
               "set": sets + args.set, **result}
        with out.open("a") as f:  # one line per finished job: a kill loses at most the running job
            f.write(json.dumps(row) + "\n")
        print(f"    test_acc {row['test_acc'] * 100:.2f} in {row['seconds']:.0f}s", flush=True)


def fastest_speed(rows: list[dict]) -> float:
    """The highest labelled images per training second (steps and data, no evaluation) among ``rows``.

    Runs of one grid can come from different sessions, some sharing the cores with other work; sharing only
    slows a run, so the fastest run of an arm is the closest to its uncontended speed (a median mixed loads)."""
    values = [r["images_per_second"] for r in rows if r.get("images_per_second")]
    return max(values) if values else 0.0


def paired_line(label: str, diffs: list[float]) -> str:
    from scipy import stats

    n = len(diffs)
    mean = sum(diffs) / n
    median = statistics.median(diffs)
    # the mean's t interval is what the issue asks for; median, sign count and the signed-rank test show
    # whether one outlying pair carries it
    robust = f"{median:+.2f} | {sum(d > 0 for d in diffs)}/{n}"
    if n < 2:
        return f"| {label} | {mean:+.2f} | | | {n} | {robust} | | |"
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    wilcoxon = f"{stats.wilcoxon(diffs).pvalue:.3f}" if any(diffs) else ""
    needed = pairs_to_detect(PLANNED_EFFECT, sd)
    return (f"| {label} | {mean:+.2f} | ± {recipe_grid.ci95(diffs):.2f} | {mde(n, sd):.2f} | {n} | {robust} | {wilcoxon} | "
            f"{needed if needed else ''} |")


#: the published gains are +0.6 to +2 points; issue 17 sizes the experiment to see +1.5
PLANNED_EFFECT = 1.5


def mde(n: int, sd: float) -> float:
    """The smallest mean difference a two-sided paired t-test at 5% detects with 80% power over n pairs."""
    from scipy import stats

    return (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)


def pairs_to_detect(effect: float, sd: float, most: int = 1000) -> int | None:
    """How many pairs at this pair sd detect ``effect`` (80% power, 5% two-sided); None past ``most``."""
    return next((n for n in range(2, most + 1) if mde(n, sd) <= effect), None)


def table(rows: list[dict]) -> str:
    by = {job_key(r): r for r in rows}
    lines = ["| family | arm | runs | mean test acc | minutes/run | training time vs base | meta term / base gradient (median) |",
             "|---|---|---|---|---|---|---|"]
    for family in [f for f in FAMILIES if any(r["family"] == f for r in rows)]:
        base_speed = fastest_speed([r for r in rows if r["family"] == family and r["arm"] == "base"])
        for arm in arms_of(family, optional=True):
            items = [r for r in rows if r["family"] == family and r["arm"] == arm]
            if items:
                acc = [100 * r["test_acc"] for r in items]
                ci = f" ± {recipe_grid.ci95(acc):.1f}" if len(acc) > 1 else ""
                speed = fastest_speed(items)
                relative = f"{base_speed / speed:.2f}x" if base_speed and speed else ""
                shares = [r["meta_added_to_base_norm"]["median"] for r in items if r.get("meta_added_to_base_norm")]
                share = f"{statistics.median(shares):.3g} (n = {len(shares)})" if shares else ""
                lines.append(f"| {family} | {arm} | {len(items)} | {sum(acc) / len(acc):.1f}{ci} | "
                             f"{sum(r['seconds'] for r in items) / len(items) / 60:.1f} | {relative} | {share} |")
    lines += ["", "| paired difference (points) | mean | 95% CI | MDE (80% power) | pairs | median | arm ahead | Wilcoxon p | "
              f"pairs to see {PLANNED_EFFECT} |", "|---|---|---|---|---|---|---|---|---|"]
    for family in [f for f in FAMILIES if any(r["family"] == f for r in rows)]:
        arms = arms_of(family, optional=True)
        meta_arm = arms[1]
        comparisons = [(a, "base") for a in arms[1:]] + [(meta_arm, c) for c in arms[2:] if c != "critic-warm"]
        for arm, reference in comparisons:
            diffs = [100 * (r["test_acc"] - by[(family, reference) + k[2:]]["test_acc"])
                     for k, r in by.items() if k[:2] == (family, arm) and (family, reference) + k[2:] in by]
            if diffs:
                lines.append(paired_line(f"{family}: {arm} - {reference}", diffs))
    return "\n".join(lines + ["", per_pair_table(rows)])


def per_pair_table(rows: list[dict]) -> str:
    """Each family's test accuracy (%) per (target, seed) and arm; '-' where an arm has not run."""
    lines = []
    for family in [f for f in FAMILIES if any(r["family"] == f for r in rows)]:
        arms = [a for a in arms_of(family, optional=True) if any(r["family"] == family and r["arm"] == a for r in rows)]
        by = {(r["target"], int(r["seed"]), r["arm"]): 100 * r["test_acc"] for r in rows if r["family"] == family}
        lines += ([""] if lines else []) + [f"| {family}: target | seed | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
        for target, seed in sorted({k[:2] for k in by}):
            cells = [f"{by[(target, seed, a)]:.2f}" if (target, seed, a) in by else "-" for a in arms]
            lines.append(f"| {target} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def toward_table(rows: list[dict], reference: list[dict], label: str) -> str:
    """Per family and arm: does (arm − base) follow (reference − base) over shared (target, seed) pairs?"""
    other = {(r["target"], int(r["seed"])): 100 * unaveraged_acc(r) for r in reference}
    lines = [f"| moves base toward {label}? | pairs | r (arm − base vs {label} − base) | 95% CI of r | slope |",
             "|---|---|---|---|---|"]
    for family in [f for f in FAMILIES if any(r["family"] == f for r in rows)]:
        base = {(r["target"], int(r["seed"])): 100 * r["test_acc"] for r in rows if r["family"] == family and r["arm"] == "base"}
        for arm in arms_of(family, optional=True)[1:]:
            pairs = [(other[k] - base[k], 100 * r["test_acc"] - base[k]) for r in rows
                     if r["family"] == family and r["arm"] == arm
                     for k in [(r["target"], int(r["seed"]))] if k in base and k in other]
            # a family whose base is the reference learner itself (ERM vs erm_default) has no gap to follow
            if len(pairs) >= 3 and any(x != 0 for x, _ in pairs):
                lines.append(f"| {family}: {arm} | {len(pairs)} | " + " | ".join(correlation(pairs)) + " |")
    return "\n".join(lines)


def correlation(pairs: list[tuple[float, float]]) -> tuple[str, str, str]:
    """Pearson r, its 95% CI (Fisher z; needs 4+ pairs) and the slope of y on x, as table cells."""
    n = len(pairs)
    mx, my = (sum(p[i] for p in pairs) / n for i in (0, 1))
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    syy = sum((y - my) ** 2 for _, y in pairs)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    if sxx == 0 or syy == 0:
        return "", "", ""
    r = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    ci = ""
    if n > 3 and abs(r) < 1:
        half = 1.959964 / math.sqrt(n - 3)
        ci = f"{math.tanh(math.atanh(r) - half):+.2f} to {math.tanh(math.atanh(r) + half):+.2f}"
    return f"{r:+.2f}", ci, f"{sxy / sxx:+.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--arms", default=None, help="only these arms (comma-separated); default: every arm of each family")
    parser.add_argument("--targets", default="art_painting,cartoon,photo,sketch")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="key=value for every run (after the arm's own)")
    parser.add_argument("--dataset", default="pacs")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'benchmarks' / 'results' / 'accuracy.db'}")
    parser.add_argument("--experiment", default="benchmarks-meta-grid")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy" / "meta_grid.jsonl"))
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps (smoke tests)")
    parser.add_argument("--image-size", type=int, default=None, help="override the recipe's image size (smoke tests)")
    parser.add_argument("--eval-every", type=int, default=None, help="override the recipe's evaluation interval")
    parser.add_argument("--base-from", action="append", default=[], metavar="FILE",
                        help="recipe_grid.py result file whose identically configured runs stand in for base arms")
    parser.add_argument("--until", default=None, metavar="HH:MM",
                        help="start no job that would not finish by this local time (expected from the arm's finished runs in "
                             "--out, recipe_grid.expected_minutes): a session can end without a half-trained job")
    parser.add_argument("--plan", action="store_true",
                        help="list the jobs not finished yet with their expected minutes (recipe_grid.plan_line), and run none")
    parser.add_argument("--table", nargs="*", default=None, help="render these result files instead of running")
    parser.add_argument("--toward", default=None, metavar="FILE",
                        help="with --table: does each arm move base toward this recipe_grid.py file's learner? (e.g. erm_default.jsonl)")
    args = parser.parse_args()
    if args.toward is not None and args.table is None:
        raise SystemExit("--toward needs --table: it analyses finished rows")
    if args.toward is not None and not Path(args.toward).is_file():
        raise SystemExit(f"--toward {args.toward}: no such result file; give a recipe_grid.py --out file")
    if args.table is not None:
        rows = [r for path in args.table for r in recipe_grid.read_rows(Path(path))]
        print(table(rows))
        if args.toward is not None:
            print("\n" + toward_table(rows, recipe_grid.read_rows(Path(args.toward)), Path(args.toward).stem))
    else:
        run_grid(args)


if __name__ == "__main__":
    main()
