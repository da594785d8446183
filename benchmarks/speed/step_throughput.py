"""Training-step throughput of every dgmeta learner and meta mode against a bare timm step.

One process, one batch. Each round times, for every configuration in a shuffled order, one bare
timm forward/backward/SGD step on ``--batch`` labelled images and right after it one dgmeta step
of that configuration; the ratio of the pair (bare seconds / dgmeta seconds = dgmeta's images/s
relative to bare) is one sample, so both sides of a ratio share the machine's load of that moment.
Reported: the median ratio over rounds and its quartiles. DANN and MCD (msda) also see
``batch / 3`` unlabelled target images per step; DANN, which forwards them in the same pass, is
also paired with a bare step on all ``batch + batch / 3`` images (``..._same_images``). The meta
modes wrap ERM; ``dann+init``, ``mcd+critic`` etc. (only when asked for) wrap the DA learners, and
``time_vs_base_learner`` gives each one's step time relative to its learner alone. ``erm+data`` adds drawing and augmenting the batch from uint8 arrays, as a run does; ``erm@bf16`` runs under CPU
bf16 autocast; ``erm@compile`` (only when asked for: compiling keeps worker processes busy for
minutes) compiles the featurizer with ``torch.compile``, compile time excluded (warm-up);
``...@pytorch-double-backward`` (only when asked for) runs a meta mode without
``dgmeta.meta.double_backward``, i.e. on PyTorch's own second derivatives, for a before/after.

    python benchmarks/speed/step_throughput.py                 # tf_efficientnet_lite0, 128 px, batch 96
    python benchmarks/speed/step_throughput.py --quick         # 64 px, batch 24, 3 rounds: a smoke run
    python benchmarks/speed/step_throughput.py --configs erm,erm@compile --rounds 8
    python benchmarks/speed/step_throughput.py --configs dann,dann+init,dann+critic,mcd,mcd+init,mcd+critic,jigen,jigen+init,jigen+critic
    python benchmarks/speed/step_throughput.py --configs "dann,dann+init order 2,mcd,mcd+init order 2,jigen,jigen+init order 2"
    python benchmarks/speed/step_throughput.py --configs "erm,init order 2,init order 2@pytorch-double-backward,critic,critic@pytorch-double-backward"
    python benchmarks/speed/step_throughput.py --configs "dann,dann+init,dann+init splits=sample" --image-size 176 --batch 48

Writes benchmarks/results/step_throughput[_quick].json and prints it.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager, nullcontext
import json
import os
import random
import sys
import time
from pathlib import Path

# the entry point's tuning before torch: OMP_WAIT_POLICY=PASSIVE unless the environment says
# otherwise, and OpenMP reads it once, when torch loads it -- so this measures what `dgmeta run`
# gets (OMP_WAIT_POLICY=ACTIVE python benchmarks/speed/step_throughput.py measures spinning threads instead)
from dgmeta.process import tune_process  # noqa: E402

tune_process(sys.argv[1:])

OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
#: benchmarks/results/<group>/<script>[_<variant>].<ext> (benchmarks/README.md, "Results")
RESULTS = HERE.parent / "results" / "speed"
#: name -> (base, meta, hparam overrides, variant)
CONFIGS = {
    "erm": ("erm", "none", {}, ""),
    "erm+data": ("erm", "none", {}, "data"),
    "dann": ("dann", "none", {}, ""),
    "mcd": ("mcd", "none", {}, ""),
    "jigen": ("jigen", "none", {}, ""),
    "init order 1": ("erm", "init", {"meta_order": 1}, ""),
    "init order 2": ("erm", "init", {"meta_order": 2}, ""),
    "critic": ("erm", "critic", {}, ""),
    "erm@bf16": ("erm", "none", {}, "bf16"),
    "erm@compile": ("erm", "none", {}, "compile"),
    # before/after of dgmeta.meta.double_backward (only when asked): PyTorch's own double backward
    "init order 2@pytorch-double-backward": ("erm", "init", {"meta_order": 2}, "pytorch-double-backward"),
    "critic@pytorch-double-backward": ("erm", "critic", {}, "pytorch-double-backward"),
}
#: each meta mode around each DA learner (issue 4's cost "relative to its base learner"); only when asked:
#: ``--configs dann,dann+init,dann+critic,mcd,mcd+init,mcd+critic,jigen,jigen+init,jigen+critic``
META_ON_LEARNERS = {
    f"{base}+{meta}": (base, meta, {}, "") for base in ("dann", "mcd", "jigen") for meta in ("init", "critic")
}
META_ON_LEARNERS.update({f"{base}+init order 2": (base, "init", {"meta_order": 2}, "") for base in ("dann", "mcd", "jigen")})
#: MetaDA's term from one sampled held-out split a step instead of the average over all of them
#: (issue 17's cost question: averaging all S = 3 splits costs S episodes a step)
META_ON_LEARNERS.update({f"{base}+init splits=sample": (base, "init", {"meta_splits": "sample"}, "") for base in ("dann", "mcd", "jigen")})
CONFIGS.update(META_ON_LEARNERS)
#: DA steps that forward the unlabelled target images too, in one pass with the labelled batch
#: (DANN): also compared with a bare step on all those images ("same images")
SAME_IMAGES = {"dann"}
#: compilation leaves worker processes busy for minutes, which would disturb the other timings
DEFAULT_CONFIGS = [name for name in CONFIGS if "@compile" not in name and "@pytorch" not in name and name not in META_ON_LEARNERS]


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def build_step(name: str, args, batch, sources_uint8):
    """A zero-argument callable running one training step of configuration ``name``."""
    from dgmeta.data import augment_batch
    from dgmeta.evaluation.accuracy import precision_context, to_float_images
    from dgmeta.hparams import apply_overrides, default_hparams
    from dgmeta.learners import Batch, LearnerContext, create_learner
    from dgmeta.meta import create_stepper
    from dgmeta.models import create_network

    base, meta, overrides, variant = CONFIGS[name]
    protocol = "msda" if base in ("dann", "mcd") else "dg"
    hparams = apply_overrides(default_hparams(base, meta), {"lr": 0.001, **overrides})
    network = create_network(args.backbone, args.classes, weights="none")
    learner = create_learner(base, network, LearnerContext(args.classes, 3, protocol, 10_000), hparams)
    if variant == "compile":
        learner.featurizer.compile()  # in place: parameter names (checkpoints) unchanged
    stepper = create_stepper(meta, learner, hparams, 10_000, 3, 0)
    step_batch = batch if protocol == "msda" else Batch(batch.x, batch.y, batch.domain, None)
    precision = "bf16" if variant == "bf16" else "fp32"
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        current = step_batch
        if variant == "data":
            xs, ys = zip(*(source.next() for source in sources_uint8))
            current = Batch(augment_batch(to_float_images(torch.cat(xs)), generator), torch.cat(ys), batch.domain, None)
        with precision_context(precision), pytorch_double_backward() if variant == "pytorch-double-backward" else nullcontext():
            stepper.step(current)

    return step


@contextmanager
def pytorch_double_backward():
    """The meta modes without dgmeta.meta.double_backward, as before it existed."""
    import dgmeta.meta.critic as critic
    import dgmeta.meta.gradient as gradient

    saved = gradient.fast_double_backward, critic.fast_double_backward
    gradient.fast_double_backward = critic.fast_double_backward = nullcontext
    try:
        yield
    finally:
        gradient.fast_double_backward, critic.fast_double_backward = saved


def build_bare(args, batch, with_target: bool = False):
    """A bare timm step on the labelled images, or (``with_target``) on every image a DA step
    forwards: the labelled batch plus the unlabelled target images, as one batch."""
    import timm

    model = timm.create_model(args.backbone, num_classes=args.classes).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, nesterov=True)
    x, y = batch.x, batch.y
    if with_target:
        x = torch.cat([x, batch.target_x])
        y = torch.cat([y, torch.randint(0, args.classes, (len(batch.target_x),))])
    x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def time_vs_base_learner(ratios: dict[str, list[float]]) -> dict[str, float]:
    """Step time of ``<learner>+<meta>`` over that of ``<learner>``, both measured against the bare step."""
    out = {}
    for name in ratios:
        base = name.split("+")[0]
        if name in META_ON_LEARNERS and base in ratios:
            out[name] = round(float(np.median(ratios[base]) / np.median(ratios[name])), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=96, help="labelled images per step (3 sources x 32)")
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=1)
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="64 px, batch 24, 3 rounds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.batch, args.rounds = 64, 24, 3
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"error: unknown config {unknown[0]!r}; choose from {', '.join(CONFIGS)}")

    from dgmeta.data import InfiniteBatches
    from dgmeta.learners import Batch

    torch.manual_seed(0)
    s, n = args.image_size, args.batch
    batch = Batch(torch.rand(n, 3, s, s), torch.randint(0, args.classes, (n,)), torch.arange(n) % 3, torch.rand(n // 3, 3, s, s))
    images = np.random.default_rng(0).integers(0, 255, (max(512, n), 3, s, s), dtype=np.uint8)
    labels = np.arange(len(images)) % args.classes
    sources = [InfiniteBatches(images, labels, n // 3, seed=i) for i in range(3)]

    load_before = load_average()
    steps = {"bare timm": build_bare(args, batch)}
    if any(name in SAME_IMAGES for name in names):
        steps["bare timm +target"] = build_bare(args, batch, with_target=True)
    steps.update({name: build_step(name, args, batch, sources) for name in names})
    warmup_seconds = {}
    for name, fn in steps.items():  # warm-up (and torch.compile's compilation)
        t0 = time.perf_counter()
        fn()
        warmup_seconds[name] = round(time.perf_counter() - t0, 2)
    # paired rounds: every configuration is timed right after its own bare step, so the two
    # share the machine's load of that moment; the ratio of each pair is one sample
    timings: dict[str, list[float]] = {name: [] for name in steps}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    same_images: dict[str, list[float]] = {name: [] for name in names if name in SAME_IMAGES}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(names)
        rng.shuffle(order)
        for name in order:
            pair = []
            sequence = ("bare timm", name) + (("bare timm +target",) if name in SAME_IMAGES else ())
            for which in sequence:
                t0 = time.perf_counter()
                for _ in range(args.steps_per_round):
                    steps[which]()
                pair.append((time.perf_counter() - t0) / args.steps_per_round)
                timings[which].append(pair[-1])
            ratios[name].append(pair[0] / pair[1])
            if name in SAME_IMAGES:
                same_images[name].append(pair[2] / pair[1])
    seconds = {name: float(np.median(values)) for name, values in timings.items()}
    report = {
        "command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "backbone": args.backbone, "weights": "none", "image_size": s, "batch": n, "rounds": args.rounds,
        "steps_per_round": args.steps_per_round, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "OMP_WAIT_POLICY": OMP_WAIT_POLICY,
        "load_average_before": load_before, "load_average_after": load_average(),
        "throughput_vs_bare_median": {k: round(float(np.median(v)), 3) for k, v in ratios.items()},
        "throughput_vs_bare_quartiles": {k: [round(float(q), 3) for q in np.percentile(v, [25, 75])] for k, v in ratios.items()},
        "throughput_vs_bare_same_images_median": {k: round(float(np.median(v)), 3) for k, v in same_images.items()},
        "throughput_vs_bare_same_images_quartiles": {k: [round(float(q), 3) for q in np.percentile(v, [25, 75])] for k, v in same_images.items()},
        "time_vs_base_learner": time_vs_base_learner(ratios),
        "seconds_per_step_median": {k: round(v, 3) for k, v in seconds.items()},
        "labelled_images_per_second_median": {k: round(n / v, 2) for k, v in seconds.items()},
        "seconds_per_step_all": {k: [round(t, 3) for t in v] for k, v in timings.items()},
        "warmup_seconds": warmup_seconds,
    }
    out = args.out or RESULTS / f"step_throughput{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
