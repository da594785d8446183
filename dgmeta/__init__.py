"""dgmeta: domain generalization / adaptation with meta-learning on top.

Pipeline, one sub-package per stage:
data -> models -> learners (+ losses) -> meta -> training -> evaluation -> tracking -> cli
"""

__version__ = "0.1.0"
