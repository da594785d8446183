"""Where a second-order MetaDA meta-gradient spends its time, with and without dgmeta's fast double backward.

One ERM learner on tf_efficientnet_lite0 (weights none), an episode of ``--train`` meta-train and
``--test`` meta-test images at ``--image-size`` (the default online episode: half of 3 x 32),
``meta_gradient(order=2)`` timed ``--rounds`` times alternately on PyTorch's own double backward and
inside ``dgmeta.meta.double_backward``, then profiled once each with torch.profiler. Reported per
variant: median wall seconds (and the median per-round ratio of the two), convolution kernel
calls, and the share of profiled CPU time under batch norm's double backward and under
``aten::_convolution_double_backward`` (every convolution's; the grouped ones loop over groups);
and the fast meta-gradient's time by phase, next to a plain forward/backward of the meta-train batch.

    python benchmarks/speed/double_backward_profile.py

Writes benchmarks/results/speed/double_backward_profile.json and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: benchmarks/results/<group>/<script>[_<variant>].<ext> (benchmarks/README.md, "Results")
RESULTS = HERE.parent / "results" / "speed"
sys.path.insert(0, str(HERE.parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--train", type=int, default=32)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, each running both variants")
    parser.add_argument("--out", type=Path, default=RESULTS / "double_backward_profile.json")
    args = parser.parse_args()

    import dgmeta.meta.gradient as gradient
    from dgmeta.hparams import apply_overrides, default_hparams
    from dgmeta.learners import Batch, LearnerContext, create_learner
    from dgmeta.models import create_network

    torch.manual_seed(0)
    hparams = apply_overrides(default_hparams("erm", "init"), {"meta_order": 2})
    learner = create_learner("erm", create_network("tf_efficientnet_lite0", 7, weights="none"), LearnerContext(7, 3, "dg", 100), hparams)
    learner.train()
    s = args.image_size
    train = Batch(torch.rand(args.train, 3, s, s), torch.randint(0, 7, (args.train,)), torch.arange(args.train) % 2, None)
    test = Batch(torch.rand(args.test, 3, s, s), torch.randint(0, 7, (args.test,)), torch.full((args.test,), 2), None)
    fast = gradient.fast_double_backward
    report = {"command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "image_size": s,
              "meta_train_images": args.train, "meta_test_images": args.test, "torch_threads": torch.get_num_threads()}
    variants = {"pytorch double backward": contextlib.nullcontext, "dgmeta fast double backward": fast}

    def meta_gradient_with(mode) -> None:
        gradient.fast_double_backward = mode
        try:
            gradient.meta_gradient(learner, train, test, 0.1, 0.01, 1, order=2)
        finally:
            gradient.fast_double_backward = fast

    seconds: dict[str, list[float]] = {variant: [] for variant in variants}
    for round_ in range(args.rounds + 1):  # round 0 warms up; variants alternate, sharing the machine's load
        for variant, mode in variants.items():
            start = time.perf_counter()
            meta_gradient_with(mode)
            if round_:
                seconds[variant].append(time.perf_counter() - start)
    for variant, mode in variants.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            meta_gradient_with(mode)
        events = {e.key: e for e in prof.key_averages()}
        total = sum(e.self_cpu_time_total for e in events.values())

        def share(*keys: str) -> float:
            return round(sum(events[k].cpu_time_total for k in keys if k in events) / total, 3)

        report[variant] = {
            "seconds_unprofiled_median": round(statistics.median(seconds[variant]), 3),
            "seconds_unprofiled_all": [round(t, 3) for t in seconds[variant]],
            "convolution_kernel_calls": sum(events[k].count for k in ("aten::mkldnn_convolution", "aten::thnn_conv2d") if k in events),
            # PyTorch's composite, or dgmeta's BatchNormBackward.backward
            "share_batch_norm_double_backward": share("NativeBatchNormBackwardBackward0", "BatchNormBackwardBackward"),
            "share_convolution_double_backward": share("aten::_convolution_double_backward"),
        }
    ratios = [a / b for a, b in zip(seconds["pytorch double backward"], seconds["dgmeta fast double backward"])]
    report["speedup_median_per_round"] = round(statistics.median(ratios), 3)
    report["phases_fast_seconds_median"] = phase_times(gradient, learner, train, test, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def phase_times(gradient, learner, train, test, rounds: int) -> dict[str, float]:
    """Where one fast second-order meta-gradient's time goes, next to a plain (no-graph) forward and
    backward of the same meta-train batch, which is what first order and ordinary training do."""
    stage = learner.stages()[0].name
    times: dict[str, list[float]] = {}

    def clock(name: str, start: float) -> float:
        now = time.perf_counter()
        times.setdefault(name, []).append(now - start)
        return now

    for _ in range(rounds + 1):
        theta, buffers = gradient.trainable_params(learner), gradient.scratch_buffers(learner)
        start = time.perf_counter()
        loss = gradient.evaluate_objective(learner, theta, buffers, train, stage, 0.1).loss
        torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
        start = clock("plain forward + backward, meta-train batch", start)
        with gradient.fast_double_backward():
            adapted = gradient.inner_adapt(learner, theta, train, 0.1, 0.01, 1, True, buffers)
        start = clock("inner step: forward + backward keeping its graph", start)
        val_loss = gradient.prediction_loss(learner, adapted.params, buffers, test)
        start = clock("meta-test forward", start)
        torch.autograd.grad(val_loss, list(theta.values()), allow_unused=True)
        clock("meta-test backward through the inner graph (double backward)", start)
    return {name: round(statistics.median(values[1:]), 3) for name, values in times.items()}


if __name__ == "__main__":
    main()
