"""ERM on full PACS for one target: test_acc, images/s and data-wait share (the step's overhead over a
bare timm step is benchmarks/speed/step_throughput.py's).

    python benchmarks/accuracy/erm_pacs.py --data-root ../shared/data --target art_painting --steps 300 --image-size 128

Writes benchmarks/results/accuracy/erm_pacs_<base>_<meta>_<target>_<size>px.json and prints it.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", default=str(HERE.parents[2] / "shared" / "data"))
    parser.add_argument("--target", default="art_painting")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--base", default="erm")
    parser.add_argument("--meta", default="none")
    parser.add_argument("--protocol", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--tracking-uri", default=f"sqlite:///{RESULTS / 'mlruns.db'}")
    args = parser.parse_args()

    from dgmeta.runs.config import RunConfig
    from dgmeta.runs.experiment import run_experiment

    config = RunConfig(
        dataset="pacs", data_root=args.data_root, base=args.base, meta=args.meta, protocol=args.protocol,
        targets=[args.target], seeds=[args.seed], steps=args.steps, batch_size=args.batch_size,
        image_size=args.image_size, backbone=args.backbone, weights="imagenet", eval_every=args.eval_every,
        experiment="benchmarks", tracking_uri=args.tracking_uri,
    )
    started = time.time()
    result = run_experiment(config)
    run = result.runs[0]
    report = {
        "command": " ".join(sys.argv),
        "dataset": "pacs", "split": "official", "target": args.target, "base": args.base, "meta": args.meta,
        "protocol": result.protocol, "backbone": args.backbone, "image_size": args.image_size,
        "steps": args.steps, "batch_per_source": args.batch_size, "seed": args.seed,
        "test_acc": round(run.test_acc, 4), "selected_step": run.selected_step,
        "oracle_test_acc (not reported as test_acc)": round(run.oracle_test_acc, 4),
        "train_images_per_second": round(run.images_per_second, 1),
        "data_wait_fraction": round(run.data_wait_fraction, 4),
        "wall_seconds": round(time.time() - started, 1),
        "mlflow_run_id": run.run_id,
    }
    path = RESULTS / f"erm_pacs_{args.base}_{args.meta}_{args.target}_{args.image_size}px.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
