"""Cross-domain few-shot evaluation of a trained network.

``sampler`` (episodes) -> ``embed`` (features cached once) -> ``methods`` (prototype, linear,
finetune, maml) -> ``runner`` (mean accuracy ± 95% CI per method and shot count) ->
``tracking`` (MLflow metrics + per-episode CSV). ``resolve`` turns a MODEL argument (path, run
id, registered model) into a ``network.pt``.
"""

from dgmeta.evaluation.fewshot.methods import FEWSHOT_METHODS, FewShotMethod, Task, create_method, method_names
from dgmeta.evaluation.fewshot.resolve import resolve_model
from dgmeta.evaluation.fewshot.runner import (
    EpisodeRecord,
    FewShotReport,
    FewShotResult,
    confidence95,
    parse_shots,
    run_fewshot,
)
from dgmeta.evaluation.fewshot.sampler import Episode, EpisodeSampler
from dgmeta.evaluation.fewshot.tracking import log_fewshot

__all__ = [
    "FEWSHOT_METHODS",
    "Episode",
    "EpisodeRecord",
    "EpisodeSampler",
    "FewShotMethod",
    "FewShotReport",
    "FewShotResult",
    "Task",
    "confidence95",
    "create_method",
    "log_fewshot",
    "method_names",
    "parse_shots",
    "resolve_model",
    "run_fewshot",
]
