"""Where a Lite0 training step's memory goes, and what dgmeta's ReLU6 and evaluation batch size change.

Three measurements, one process each where it matters:

1. Bytes saved for the backward pass of one forward (``--batch`` images at ``--image-size``), by
   the autograd node that saved them, for stock timm (``nn.ReLU6(inplace=True)``) and for the
   featurizer dgmeta builds (``dgmeta.models.activations``): found by walking the autograd graph.
2. Step time of the two models in alternating rounds (forward, backward, SGD step; same batch).
3. Evaluation (no gradients) at 256 vs ``EVAL_BATCH_SIZE`` images per batch: images/s in
   alternating rounds, and the peak RSS of a child process that only evaluates.

    python benchmarks/memory/activation_memory.py            # 96 images, 128 px, 6 rounds

Writes benchmarks/results/memory/activation_memory.json and prints it.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: benchmarks/results/<group>/<script>[_<variant>].<ext> (benchmarks/README.md, "Results")
RESULTS = HERE.parent / "results" / "memory"
sys.path.insert(0, str(HERE.parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

EVAL_CHILD = """
import sys, timm, torch
from dgmeta.models.activations import use_output_saving_relu6
model = timm.create_model("tf_efficientnet_lite0", num_classes=7)
use_output_saving_relu6(model)
model = model.to(memory_format=torch.channels_last).eval()
batch, size = int(sys.argv[1]), int(sys.argv[2])
with torch.no_grad():
    for start in range(0, 512, batch):
        model(torch.rand(min(batch, 512 - start), 3, size, size).contiguous(memory_format=torch.channels_last))
# VmHWM, not ru_maxrss: the latter carries the parent's peak over fork/exec
print([int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 2**20)
"""


def lite0(lean: bool) -> torch.nn.Module:
    import timm

    from dgmeta.models.activations import use_output_saving_relu6

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=7)
    if lean:
        use_output_saving_relu6(model)
    return model.to(memory_format=torch.channels_last)


def saved_by_node(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """GiB of distinct storages saved for backward, by (node type, attribute)."""
    out = model(x).sum()
    seen, visited, totals = set(), set(), collections.Counter()
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
            except Exception:  # noqa: BLE001 - some saved attributes cannot be read back
                continue
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    seen.add(t.untyped_storage().data_ptr())
                    totals[f"{type(node).__name__}.{attr}"] += t.untyped_storage().nbytes()
        stack.extend(n for n, _ in node.next_functions)
    return {k: round(v / 2**30, 3) for k, v in totals.most_common() if v > 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS / "activation_memory.json")
    args = parser.parse_args()
    from dgmeta.evaluation.accuracy import EVAL_BATCH_SIZE

    s, n = args.image_size, args.batch
    x = torch.rand(n, 3, s, s).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (n,))
    models = {"stock timm": lite0(False), "dgmeta": lite0(True)}
    saved = {name: saved_by_node(model, x) for name, model in models.items()}

    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-3) for name, m in models.items()}

    def step(name: str) -> float:
        start = time.perf_counter()
        optimizers[name].zero_grad(set_to_none=True)
        F.cross_entropy(models[name](x), y).backward()
        optimizers[name].step()
        return time.perf_counter() - start

    for name in models:
        step(name)
    ratios = []
    for _ in range(args.rounds):
        ratios.append(step("stock timm") / step("dgmeta"))

    eval_model = models["dgmeta"].eval()
    images = torch.rand(512, 3, s, s)

    def evaluate(batch: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(images), batch):
                eval_model(images[i : i + batch].contiguous(memory_format=torch.channels_last))
        return len(images) / (time.perf_counter() - start)

    evaluate(EVAL_BATCH_SIZE), evaluate(256)
    eval_ratios = [evaluate(EVAL_BATCH_SIZE) / evaluate(256) for _ in range(max(2, args.rounds // 2))]
    eval_rss = {
        batch: round(float(subprocess.run([sys.executable, "-c", EVAL_CHILD, str(batch), str(s)], capture_output=True, text=True, check=True, cwd=HERE.parents[1]).stdout), 3)
        for batch in (256, EVAL_BATCH_SIZE)
    }
    report = {
        "command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "batch": n, "image_size": s, "torch_threads": torch.get_num_threads(),
        "saved_for_backward_gib_by_node": saved,
        "saved_for_backward_gib_total": {k: round(sum(v.values()), 3) for k, v in saved.items()},
        "step_time_stock_over_dgmeta_median": round(statistics.median(ratios), 3),
        "step_time_stock_over_dgmeta_all": [round(r, 3) for r in ratios],
        f"eval_images_per_second_batch{EVAL_BATCH_SIZE}_over_batch256": [round(r, 3) for r in eval_ratios],
        "eval_only_child_peak_rss_gib_by_batch": eval_rss,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
