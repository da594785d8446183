"""dgmeta.training.allocator: ``--memory fast`` really stops the page faults of re-allocated tensors."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from dgmeta.errors import ConfigError
from dgmeta.runs.config import RunConfig
from dgmeta.training.allocator import configure_allocator

# A training step in miniature: allocate and touch activations of a few sizes, free them all,
# repeat; count the minor page faults of the steps after a warm-up. Under ``fast`` the heap still
# gives a block back now and then (its top crossing the trim threshold), so a few steps fault.
PROBE = """
import json, resource, sys, torch
from dgmeta.training.allocator import configure_allocator
changed = configure_allocator(sys.argv[1])
def step():
    alive = [torch.empty(mib * 2**18).fill_(1.0) for mib in (8, 64, 32, 64, 16)]
    del alive
for _ in range(4):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print(json.dumps({"changed": changed, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_fast_mode_reuses_freed_tensors_without_page_faults():
    lean, fast = probe("lean"), probe("fast")
    pages = 8 * (8 + 64 + 32 + 64 + 16) * 2**20 // 4096
    assert not lean["changed"] and fast["changed"]
    assert lean["faults"] > pages // 2  # glibc maps the large blocks afresh: one fault per page touched
    assert fast["faults"] < pages // 4  # measured: 0 to 0.13 of the pages (lean: 0.88)


def test_lean_is_the_default_and_unknown_modes_are_refused():
    assert RunConfig().memory == "lean"
    assert configure_allocator("lean") is False  # leaves this (test) process alone
    with pytest.raises(ConfigError, match="unknown --memory 'max'"):
        RunConfig(memory="max").validate()
    assert RunConfig(memory="fast").config_hash() == RunConfig().config_hash()  # same results, same runs


def test_a_fast_run_computes_what_a_lean_run_does(tmp_path):
    """Only where freed memory goes changes: same seed, same losses and accuracy, ``memory`` recorded."""
    from mlflow.tracking import MlflowClient

    from tests.helpers import make_folder_dataset

    root = make_folder_dataset(tmp_path / "toy", domains=("d0", "d1", "d2"), classes=("a", "b"), per_class=8)
    outcomes = {}
    for mode in ("lean", "fast"):
        uri = f"sqlite:///{tmp_path / f'{mode}.db'}"
        subprocess.run(
            [sys.executable, "-m", "dgmeta", "run", f"folder:{root}", "--target", "d2", "--steps", "6", "--eval-every", "3",
             "--backbone", "test_resnet", "--weights", "none", "--image-size", "24", "--batch-size", "4",
             "--split", "random", "--quiet", "--tracking-uri", uri, "--memory", mode],
            check=True, capture_output=True, text=True,
        )
        client = MlflowClient(tracking_uri=uri)
        (child,) = client.search_runs(["1"], "tags.`dgmeta.role` = 'child'")
        losses = [m.value for m in client.get_metric_history(child.info.run_id, "train.loss")]
        outcomes[mode] = (child.data.params["memory"], losses, child.data.metrics["test_acc"])
    assert outcomes["lean"][0] == "lean" and outcomes["fast"][0] == "fast"
    assert len(outcomes["lean"][1]) == 6
    assert outcomes["fast"][1:] == outcomes["lean"][1:]
