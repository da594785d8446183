"""Where a second-order MetaDA meta-gradient spends its time, with and without dgmeta's fast double backward.

One ERM learner on tf_efficientnet_lite0 (weights none), an episode of ``--train`` meta-train and
``--test`` meta-test images at ``--image-size`` (the default online episode: half of 3 x 32),
``meta_gradient(order=2)`` profiled with torch.profiler once on PyTorch's own double backward and
once inside ``dgmeta.meta.double_backward``. Reported per variant: wall seconds, convolution kernel
calls, and the share of profiled CPU time under batch norm's double backward and under
``aten::_convolution_double_backward`` (every convolution's; the grouped ones loop over groups).

    python benchmarks/double_backward_profile.py

Writes benchmarks/results/double_backward_profile.json and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--train", type=int, default=32)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "double_backward_profile.json")
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
    for variant, mode in (("pytorch double backward", contextlib.nullcontext), ("dgmeta fast double backward", fast)):
        gradient.fast_double_backward = mode
        try:
            gradient.meta_gradient(learner, train, test, 0.1, 0.01, 1, order=2)  # warm-up
            start = time.perf_counter()
            gradient.meta_gradient(learner, train, test, 0.1, 0.01, 1, order=2)
            seconds = time.perf_counter() - start
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                gradient.meta_gradient(learner, train, test, 0.1, 0.01, 1, order=2)
        finally:
            gradient.fast_double_backward = fast
        events = {e.key: e for e in prof.key_averages()}
        total = sum(e.self_cpu_time_total for e in events.values())

        def share(key: str) -> float:
            return round(events[key].cpu_time_total / total, 3) if key in events else 0.0

        report[variant] = {
            "seconds_unprofiled": round(seconds, 3),
            "convolution_kernel_calls": sum(events[k].count for k in ("aten::mkldnn_convolution", "aten::thnn_conv2d") if k in events),
            "share_batch_norm_double_backward": share("NativeBatchNormBackwardBackward0"),
            "share_convolution_double_backward": share("aten::_convolution_double_backward"),
        }
    report["speedup"] = round(report["pytorch double backward"]["seconds_unprofiled"] / report["dgmeta fast double backward"]["seconds_unprofiled"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
