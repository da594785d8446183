"""dgmeta: domain generalization / adaptation with meta-learning on top.

Pipeline, one sub-package per stage:
data -> models -> learners (+ losses) -> meta -> training -> evaluation -> tracking -> cli
"""

import os as _os

# OpenMP threads that spin while waiting (GNU OpenMP's default) turn a CPU shared with other jobs
# into a trap: on a loaded 2-core machine meta-learning steps ran up to 13x slower with spinning
# threads than with passive waiting (benchmarks/README.md, "Shared CPUs"). Must be set before
# torch loads its OpenMP runtime.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
