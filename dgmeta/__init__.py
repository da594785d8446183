"""dgmeta: domain generalization / adaptation with meta-learning on top.

Layers, lowest first (docs/ARCHITECTURE.md; tests/test_layers.py): core -> data, models, losses,
tracking -> learners, evaluation -> training -> meta -> hparams -> runs -> orchestration -> cli.
"""

__version__ = "0.1.0"
