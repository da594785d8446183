"""dgmeta's training step vs a bare timm forward/backward/optimizer step, same batch, same process.

Alternates the two (so machine noise hits both alike) and reports images/s and the ratio.
`dgmeta step` = StageStepper(learner).step(batch) (objective, backward, SGD); `dgmeta step+data`
adds drawing and augmenting the batch from the uint8 arrays, as `dgmeta run` does.

    python benchmarks/step_overhead.py --backbone tf_efficientnet_lite0 --image-size 128 --batch 96 --base erm
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=96, help="total labelled images per step (3 sources x 32)")
    parser.add_argument("--base", default="erm")
    parser.add_argument("--meta", default="none")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--classes", type=int, default=7)
    args = parser.parse_args()

    from dgmeta.data import InfiniteBatches, augment_batch
    from dgmeta.hparams import default_hparams
    from dgmeta.learners import Batch, LearnerContext, create_learner
    from dgmeta.models import create_network
    from dgmeta.meta import create_stepper

    torch.manual_seed(0)
    s = args.image_size
    protocol = "msda" if args.base in ("dann", "mcd") else "dg"
    x = torch.rand(args.batch, 3, s, s)
    y = torch.randint(0, args.classes, (args.batch,))
    domains = torch.arange(args.batch) % 3
    target_x = torch.rand(args.batch // 3, 3, s, s) if protocol == "msda" else None
    batch = Batch(x, y, domains, target_x)

    bare = timm.create_model(args.backbone, num_classes=args.classes).to(memory_format=torch.channels_last)
    bare_opt = torch.optim.SGD(bare.parameters(), lr=0.001, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def bare_step():
        bare_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(bare(x.contiguous(memory_format=torch.channels_last)), y)
        loss.backward()
        bare_opt.step()

    hp = default_hparams(args.base, args.meta)
    hp["lr"] = 0.001
    network = create_network(args.backbone, args.classes, weights="none")
    learner = create_learner(args.base, network, LearnerContext(args.classes, 3, protocol, 1000), hp)
    stepper = create_stepper(args.meta, learner, hp, 1000, 3, 0)

    images = np.random.randint(0, 255, (512, 3, s, s), dtype=np.uint8)
    labels = np.random.randint(0, args.classes, 512)
    sources = [InfiniteBatches(images, labels, args.batch // 3, seed=i) for i in range(3)]
    gen = torch.Generator().manual_seed(0)

    def dgmeta_step():
        stepper.step(batch)

    def dgmeta_step_with_data():
        xs, ys = zip(*(src.next() for src in sources))
        xb = augment_batch(torch.cat(xs).float().div_(255), gen)
        stepper.step(Batch(xb, torch.cat(ys), domains, target_x))

    timings = {"bare": [], "dgmeta step": [], "dgmeta step+data": []}
    fns = {"bare": bare_step, "dgmeta step": dgmeta_step, "dgmeta step+data": dgmeta_step_with_data}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(args.steps_per_round):
                fn()
            timings[name].append((time.perf_counter() - t0) / args.steps_per_round)
    ips = {k: args.batch / float(np.median(v)) for k, v in timings.items()}
    report = {
        "backbone": args.backbone, "image_size": s, "batch": args.batch, "base": args.base, "meta": args.meta,
        "threads": torch.get_num_threads(),
        "images_per_second": {k: round(v, 1) for k, v in ips.items()},
        "ratio_step_vs_bare": round(ips["dgmeta step"] / ips["bare"], 3),
        "ratio_step_data_vs_bare": round(ips["dgmeta step+data"] / ips["bare"], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
