"""Process-level tuning, applied by the entry points (``dgmeta`` CLI, benchmark scripts, the test
suite) before torch loads, never on ``import dgmeta``: a library must not change the process of
the program that imports it.

OpenMP threads that spin while waiting (GNU OpenMP's default) turn a CPU shared with other jobs
into a trap: on a loaded 2-core machine meta-learning steps ran far slower with spinning threads
than with passive waiting (benchmarks/README.md, "Shared CPUs"). OpenMP reads ``OMP_WAIT_POLICY``
once, when torch loads it, so before the run's device is known: it is guessed from the command
line and the machine (a CPU measure, left out where the run will be on a GPU).
"""

from __future__ import annotations

import os


def run_on_cuda_expected(argv: list[str]) -> bool:
    device = "auto"
    for index, arg in enumerate(argv):
        if arg == "--device" and index + 1 < len(argv):
            device = argv[index + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    if device.startswith("cuda"):
        return True
    return device == "auto" and os.path.exists("/dev/nvidia0") and os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1")


def tune_process(argv: list[str]) -> None:
    """Passive OpenMP waiting for a CPU run, unless the environment already chose."""
    if not run_on_cuda_expected(list(argv)):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
