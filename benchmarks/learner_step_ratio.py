"""Training-step time of each base learner relative to ERM on the same batch.

One step = ``learner.update(batch)`` through the default ``StageStepper`` (forward, backward and
optimizer steps of every stage). The batch is ``--domains x --per-domain`` labelled images plus
(msda) ``--per-domain`` unlabelled target images, as the trainer draws them. Learners are timed
in interleaved rounds and the median per learner is reported, so load from other processes on
the machine hits all learners alike.

    /work/venv/bin/python benchmarks/learner_step_ratio.py --image-size 64 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dgmeta.hparams import default_hparams
from dgmeta.learners import Batch, LearnerContext, create_learner
from dgmeta.models import create_network

CASES = [("erm", "dg"), ("dann", "dg"), ("dann", "msda"), ("mcd", "msda"), ("jigen", "dg"), ("jigen", "msda")]


def make_batch(protocol: str, domains: int, per_domain: int, size: int, num_classes: int) -> Batch:
    generator = torch.Generator().manual_seed(0)
    n = domains * per_domain
    x = torch.rand(n, 3, size, size, generator=generator)
    y = torch.randint(0, num_classes, (n,), generator=generator)
    domain = torch.arange(domains).repeat_interleave(per_domain)
    target_x = None if protocol == "dg" else torch.rand(per_domain, 3, size, size, generator=generator)
    return Batch(x, y, domain, target_x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--per-domain", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per learner and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    num_classes = 7

    learners, batches = {}, {}
    for name, protocol in CASES:
        torch.manual_seed(0)
        network = create_network(args.backbone, num_classes, weights="none")
        context = LearnerContext(num_classes, args.domains, protocol, total_steps=1000)
        learners[name, protocol] = create_learner(name, network, context, default_hparams(name))
        batches[name, protocol] = make_batch(protocol, args.domains, args.per_domain, args.image_size, num_classes)
        for _ in range(2):  # warm-up: allocator, optimizer state, cached permutation set
            learners[name, protocol].update(batches[name, protocol], 0.5)

    seconds: dict[tuple[str, str], list[float]] = {case: [] for case in CASES}
    for _ in range(args.rounds):
        for case in CASES:
            start = time.perf_counter()
            for _ in range(args.steps):
                learners[case].update(batches[case], 0.5)
            seconds[case].append((time.perf_counter() - start) / args.steps)

    erm = statistics.median(seconds["erm", "dg"])
    print(f"{args.backbone}, {args.image_size}px, batch {args.domains}x{args.per_domain} (+{args.per_domain} target under msda), "
          f"{args.threads} thread(s), median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'learner':<8} {'protocol':<8} {'ms/step':>8} {'x ERM':>6}")
    for name, protocol in CASES:
        step = statistics.median(seconds[name, protocol])
        print(f"{name:<8} {protocol:<8} {1000 * step:8.1f} {step / erm:6.2f}")


if __name__ == "__main__":
    main()
