"""dgmeta: domain generalization / adaptation with meta-learning on top.

Pipeline, one sub-package per stage:
data -> models -> learners (+ losses) -> meta -> training -> evaluation -> tracking -> cli
"""

import os as _os

import sys as _sys

# OpenMP threads that spin while waiting (GNU OpenMP's default) turn a CPU shared with other jobs
# into a trap: on a loaded 2-core machine meta-learning steps ran up to 13x slower with spinning
# threads than with passive waiting (benchmarks/README.md, "Shared CPUs"). Must be set before
# torch loads its OpenMP runtime, so before the run's device is known: it is guessed from the
# command line and the machine (a CPU measure, left out where the run will be on a GPU).


def _run_on_cuda_expected(argv: list[str]) -> bool:
    device = "auto"
    for index, arg in enumerate(argv):
        if arg == "--device" and index + 1 < len(argv):
            device = argv[index + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    if device.startswith("cuda"):
        return True
    return device == "auto" and _os.path.exists("/dev/nvidia0") and _os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1")


if not _run_on_cuda_expected(list(_sys.argv[1:])):
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
