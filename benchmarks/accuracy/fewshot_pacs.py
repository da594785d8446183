"""Cross-domain few-shot on real PACS: train models on three domains, evaluate N-way K-shot on the fourth.

Trains ERM and DANN + meta-learned initialization (both leave-one-domain-out, protocol `dg`, so the
evaluated domain's images are never seen), then runs 600 shared episodes of prototype / linear /
finetune on the held-out domain, and MAML from the meta-learned initialization on the first
`--maml-episodes` of the same episodes (it re-runs the backbone per episode). Writes a Markdown table
and its JSON, and logs each few-shot report to the training run in MLflow.

    python benchmarks/accuracy/fewshot_pacs.py --domain sketch --steps 80 --image-size 96 --batch-size 16 \
        --out benchmarks/results/accuracy/fewshot_pacs_sketch_96px.md

`--reuse EARLIER.json` evaluates the models an earlier result of this script trained (same budget,
same tracking store) instead of training them again, e.g. after a change to the few-shot methods.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dgmeta.process import tune_process

# an entry point: passive OpenMP waiting before anything loads torch (benchmarks/README.md, "Shared CPUs")
tune_process(sys.argv[1:])

HERE = Path(__file__).resolve().parent
#: benchmarks/results/<group>/<script>[_<variant>].<ext> (benchmarks/README.md, "Results")
RESULTS = HERE.parent / "results" / "accuracy"

MODELS = {"ERM": ("erm", "none"), "DANN + meta init": ("dann", "init")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domain", default="sketch", help="held-out domain: never trained on, few-shot evaluated on")
    parser.add_argument("--ways", default="5")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--maml-episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--data-root", default=str(HERE.parents[2] / "shared" / "data"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{RESULTS / 'fewshot.db'}")
    parser.add_argument("--experiment", default="benchmarks-fewshot")
    parser.add_argument("--out", default=str(RESULTS / "fewshot_pacs.md"))
    parser.add_argument("--reuse", type=Path, default=None, help="an earlier result JSON whose trained runs to evaluate")
    args = parser.parse_args()
    reused = reused_runs(args.reuse, args) if args.reuse else {}

    import mlflow

    from dgmeta.data import create_dataset, labels_of, load_images
    from dgmeta.evaluation.fewshot import log_fewshot, run_fewshot
    from dgmeta.evaluation.fewshot.sampler import parse_ways
    from dgmeta.models.checkpoint import load_network
    from dgmeta.runs.config import RunConfig
    from dgmeta.runs.experiment import run_experiment

    dataset = create_dataset("pacs", args.data_root)
    samples = dataset.samples(args.domain, "test")
    labels = labels_of(samples)
    images = load_images(samples, args.image_size, progress=False)
    shots = [int(s) for s in args.shots.split(",")]
    ways = parse_ways(args.ways)
    rows = []
    for label, (base, meta_mode) in MODELS.items():
        config = RunConfig(
            dataset="pacs", data_root=args.data_root, base=base, meta=meta_mode, protocol="dg", targets=[args.domain],
            seeds=[args.seed], steps=args.steps, batch_size=args.batch_size, image_size=args.image_size,
            backbone=args.backbone, weights="imagenet", eval_every=args.steps // 2, experiment=args.experiment,
            tracking_uri=args.tracking_uri, quiet=True,
        )
        if label in reused:
            run_id, test_acc, train_seconds = reused[label]
            network, meta = load_network(model_path_of(run_id, args.tracking_uri))
        else:
            started = time.time()
            run = run_experiment(config).runs[0]
            train_seconds = time.time() - started
            run_id, test_acc = run.run_id, run.test_acc
            network, meta = load_network(run.model_path)
        methods = [("prototype", args.episodes), ("linear", args.episodes), ("finetune", args.episodes)]
        if meta_mode == "init":
            methods.append(("maml", args.maml_episodes))
        for method, episodes in methods:
            report = run_fewshot(
                network, meta, images, labels, ways=ways, shots=shots, queries=args.queries, episodes=episodes,
                methods=[method], seed=args.seed, progress=False, class_names=dataset.classes, domain=args.domain,
            )
            mlflow.set_tracking_uri(args.tracking_uri)
            with mlflow.start_run(run_id=run_id):
                log_fewshot(report)
            for r in report.results:
                rows.append({
                    "model": label, "run_id": run_id, "test_acc": test_acc, "train_seconds": train_seconds,
                    "method": r.method, "shots": r.shots, "ways": report.ways, "accuracy": r.accuracy, "ci95": r.ci95,
                    "episodes": r.episodes, "seconds_per_episode": r.seconds_per_episode,
                })
            print(f"{label} {method}: " + ", ".join(f"{r.shots}-shot {100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}" for r in report.results), flush=True)
            write_results(Path(args.out), rows, args)
    print(Path(args.out).read_text())


def reused_runs(path: Path, args) -> dict[str, tuple[str, float, float]]:
    """model label -> (run id, test_acc, train seconds) of an earlier result with the same budget."""
    earlier = json.loads(path.read_text())
    same = ("domain", "steps", "image_size", "batch_size", "seed", "backbone", "tracking_uri")
    differ = [key for key in same if str(earlier["args"].get(key)) != str(getattr(args, key))]
    if differ:
        raise SystemExit(f"--reuse {path} trained under other settings ({', '.join(differ)} differ): train again instead")
    return {r["model"]: (r["run_id"], r["test_acc"], r["train_seconds"]) for r in earlier["rows"]}


def model_path_of(run_id: str, tracking_uri: str) -> Path:
    from dgmeta.evaluation.fewshot.resolve import resolve_model

    return resolve_model(run_id, tracking_uri)


def write_results(out: Path, rows: list[dict], args) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))
    ways = rows[0]["ways"]
    lines = [
        f"PACS, trained on the three other domains (protocol dg), {args.backbone} (ImageNet), {args.image_size} px, "
        f"{args.steps} steps, batch {args.batch_size} per source, seed {args.seed}; few-shot on **{args.domain}** "
        f"(official test list), {ways}-way, {args.queries} queries per class, episode seed {args.seed}.",
        "",
        "| model | target test_acc (all 7 classes) | method | shots | accuracy % | ± 95% CI | episodes | s / episode |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {100 * r['test_acc']:.1f} | {r['method']} | {r['shots']} | {100 * r['accuracy']:.2f} | "
            f"{100 * r['ci95']:.2f} | {r['episodes']} | {r['seconds_per_episode']:.4f} |"
        )
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
