"""The floor any fine-tuning recipe must clear: a linear probe on frozen ImageNet features.

A logistic regression (scikit-learn, L2, C chosen on the sources' validation splits) on the
pooled features of the pretrained backbone with nothing trained, fitted on the three sources'
*train* lists and scored on the target's test list: the same images, resolution and preprocessing
as `dgmeta run` at that image size. A recipe whose test accuracy ends below this number has made
the pretrained representation worse than leaving it alone.

    python benchmarks/accuracy/linear_probe.py --image-size 224 \\
        --out benchmarks/results/accuracy/linear_probe_224.json

Writes one JSON object: per target the probe's test accuracy, the C chosen, and the seconds spent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def features(featurizer, images: np.ndarray, batch: int = 64) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start:start + batch]).float().div_(255)
            out.append(featurizer(x).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="pacs")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy" / "linear_probe_224.json"))
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from dgmeta.data import create_dataset
    from dgmeta.data.streaming import image_array
    from dgmeta.models.network import create_featurizer

    torch.manual_seed(0)
    dataset = create_dataset(args.dataset, args.data_root)
    featurizer = create_featurizer(args.backbone, "imagenet", channels_last=False).eval()
    started = time.time()
    cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def domain(name: str, split: str):
        if (name, split) not in cache:
            samples = dataset.samples(name, split)
            images = image_array(samples, args.image_size, "disk", progress=False)
            cache[(name, split)] = features(featurizer, images), np.array([s.label for s in samples])
        return cache[(name, split)]

    result = {"dataset": args.dataset, "backbone": args.backbone, "image_size": args.image_size, "targets": {}}
    for target in dataset.domains:
        t0 = time.time()
        sources = [d for d in dataset.domains if d != target]
        x_train, y_train = map(np.concatenate, zip(*(domain(d, "train") for d in sources)))
        x_val, y_val = map(np.concatenate, zip(*(domain(d, "val") for d in sources)))
        x_test, y_test = domain(target, "test")
        scaler = StandardScaler().fit(x_train)
        best = None
        for c in (0.01, 0.1, 1.0):  # chosen on the sources' validation, never on the target
            probe = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x_train), y_train)
            val = probe.score(scaler.transform(x_val), y_val)
            if best is None or val > best[0]:
                best = (val, c, probe)
        val, c, probe = best
        test = probe.score(scaler.transform(x_test), y_test)
        result["targets"][target] = {"test_acc": test, "val_acc": val, "C": c, "seconds": time.time() - t0}
        print(f"{target}: probe test {100 * test:.1f} (source val {100 * val:.1f}, C={c})", flush=True)
    accs = [r["test_acc"] for r in result["targets"].values()]
    result["average"] = sum(accs) / len(accs)
    result["seconds"] = time.time() - started
    print(f"average {100 * result['average']:.1f} in {result['seconds']:.0f}s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
