"""How large the online MetaDA term is next to the base learner's own gradient, on real PACS.

Online `--meta init` adds ``meta_weight`` x the meta-gradient of one episode to the first stage's
gradient before the base optimizer steps. This measures, at the ImageNet initialisation and on real
batches of the three source domains, the norm of the base gradient (full batch), of the meta-gradient
for several ``meta_batch_fraction`` values, and of a *plain* cross-entropy gradient on the same
meta-test images at the same point (no inner step): if the last one is about as large as the
meta-gradient, the meta-gradient's size is small-batch noise rather than signal. Also the cosine
between each and the base gradient. Means over ``--batches`` batches.

    python benchmarks/accuracy/meta_gradient_scale.py --target art_painting --base dann --batches 8 \
        --out benchmarks/results/accuracy/meta_gradient_scale_dann_art.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
#: benchmarks/results/<group>/<script>[_<variant>].<ext> (benchmarks/README.md, "Results")
RESULTS = HERE.parent / "results" / "accuracy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="art_painting")
    parser.add_argument("--base", default="dann")
    parser.add_argument("--protocol", default="msda")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16, help="images per source domain")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--fractions", default="0.5,1.0", help="meta_batch_fraction values")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--data-root", default=str(HERE.parents[2] / "shared" / "data"))
    parser.add_argument("--out", type=Path, default=RESULTS / "meta_gradient_scale.json")
    args = parser.parse_args()

    from dgmeta.data import InfiniteBatches, create_dataset, labels_of, load_images
    from dgmeta.evaluation.accuracy import to_float_images
    from dgmeta.hparams import default_hparams
    from dgmeta.learners import Batch, LearnerContext, create_learner
    from dgmeta.meta import create_stepper
    from dgmeta.models import create_network
    from dgmeta.runs.job import seed_everything

    seed_everything(0)
    dataset = create_dataset("pacs", args.data_root)
    if args.target not in dataset.domains:
        sys.exit(f"error: unknown target {args.target!r}; choose from {', '.join(dataset.domains)}")
    sources = [d for d in dataset.domains if d != args.target]
    n = args.batch_size

    def domain_batches(domain: str, seed: int) -> InfiniteBatches:
        samples = dataset.samples(domain, "train")
        return InfiniteBatches(load_images(samples, args.image_size, progress=False), np.asarray(labels_of(samples)), n, seed=seed)

    source_batches = [domain_batches(d, i) for i, d in enumerate(sources)]
    target_batches = domain_batches(args.target, 99)

    hparams = default_hparams(args.base, "init")
    network = create_network(args.backbone, len(dataset.classes), weights="imagenet")
    learner = create_learner(args.base, network, LearnerContext(len(dataset.classes), len(sources), args.protocol, 1000), hparams)
    stepper = create_stepper("init", learner, hparams, 1000, len(sources), 0)
    learner.train()
    first_stage = learner.stage_parameter_names(stepper.stages[0])
    params = dict(learner.named_parameters())

    def gradient_of(loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, [params[n] for n in first_stage], allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(params[n])).flatten() for n, g in zip(first_stage, grads)])

    fractions = [float(f) for f in args.fractions.split(",")]
    records: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        records.setdefault(key, []).append(value)

    for _ in range(args.batches):
        xs, ys = zip(*(b.next() for b in source_batches))
        target_x = to_float_images(target_batches.next()[0]) if args.protocol != "dg" else None
        batch = Batch(to_float_images(torch.cat(xs)), torch.cat(ys), torch.arange(len(sources)).repeat_interleave(n), target_x)
        base = gradient_of(learner(batch, stage=stepper.stages[0].name, progress=0.0).loss)
        record("base_full_batch", float(base.norm()))
        for fraction in fractions:
            stepper.hparams["meta_batch_fraction"] = fraction
            episode = stepper.next_episode(batch)
            grads = stepper.term("init").meta_gradient(learner, episode, 0.0, stepper.step_sizes()).grads
            meta = torch.cat([grads[name].flatten() for name in first_stage])
            plain = gradient_of(F.cross_entropy(learner(episode.meta_test.x), episode.meta_test.y))
            record(f"meta_fraction_{fraction}", float(meta.norm()))
            record(f"meta_fraction_{fraction}_cosine_with_base", float(F.cosine_similarity(meta, base, dim=0)))
            record(f"plain_ce_on_meta_test_images_fraction_{fraction}", float(plain.norm()))
            record(f"plain_ce_fraction_{fraction}_cosine_with_base", float(F.cosine_similarity(plain, base, dim=0)))
            record(f"meta_test_images_fraction_{fraction}", float(len(episode.meta_test.y)))

    report = {
        "command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "base": args.base, "protocol": args.protocol, "target": args.target, "image_size": args.image_size,
        "batch_per_source": n, "batches": args.batches, "weights": "imagenet", "point": "ImageNet initialisation, train mode",
        "mean": {k: round(float(np.mean(v)), 4) for k, v in records.items()},
        "std": {k: round(float(np.std(v)), 4) for k, v in records.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
