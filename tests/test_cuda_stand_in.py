"""The GPU tests run, with the CPU standing in for the GPU, on every machine (CI has no GPU).

tests/test_cuda.py is skipped without a GPU, so a test there can rot unseen until the one GPU call a
session may get (its critic test once passed the learner's hyperparameters without the critic's and
failed with a KeyError). This runs that file in a child process with ``DGMETA_CUDA_TEST_DEVICE=cpu``:
the comparisons are then trivially close, but every code path the GPU check takes is exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_tests_pass_with_the_cpu_standing_in():
    env = {**os.environ, "DGMETA_CUDA_TEST_DEVICE": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
