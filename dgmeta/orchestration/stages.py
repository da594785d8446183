"""Running a pipeline's stages: train -> evaluate -> fewshot -> register.

``train`` runs every (target, seed) job (``run_experiment``). ``evaluate`` summarises the
trained runs (mean, std, 95% CI per target and on average) and logs the summary to the parent
run. ``fewshot`` evaluates each trained network with few-shot episodes on its target.
``register`` registers the result as a model version and promotes it if it beats the champion
(see ``promotion.py``). Without ``train``, ``evaluate`` and ``register`` use the finished runs
already in the store whose config hash matches (so a spec can re-register without retraining).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from dgmeta.errors import ConfigError
from dgmeta.orchestration.spec import STAGES
from dgmeta.runs.config import RunConfig

if TYPE_CHECKING:
    from dgmeta.orchestration.spec import PipelineSpec
    from dgmeta.tracking.model_registry import Evaluation

TrainFn = Callable[[RunConfig], Any]
SUMMARY_GROUP = ("dataset", "base", "meta", "protocol", "backbone")


def default_train(config: RunConfig):
    from dgmeta.runs.experiment import run_experiment

    return run_experiment(config)


def resolved_protocol(config: RunConfig) -> str:
    from dgmeta.learners.registry import learner_class

    return config.protocol or learner_class(config.base).default_protocol


def pipeline_config_hash(config: RunConfig) -> str:
    """The hash a parent run is tagged with (child runs add their target and seed)."""
    return config.config_hash(protocol=resolved_protocol(config))


def child_config_hash(config: RunConfig, target: str, seed: int) -> str:
    return config.config_hash(protocol=resolved_protocol(config), target=target, seed=seed)


def finished_children(config: RunConfig, client=None) -> list:
    """FINISHED child runs with a test_acc in the config's experiment, newest first."""
    from dgmeta.tracking.compare import load_runs
    from dgmeta.tracking.model_registry import client_for

    client = client or client_for(config.tracking_uri)
    if client.get_experiment_by_name(config.experiment) is None:
        return []
    runs = load_runs([config.experiment], "attributes.status = 'FINISHED'", client=client)
    return sorted((r for r in runs if r.test_acc is not None), key=lambda r: -r.start_time)


def existing_evaluation(config: RunConfig, client=None) -> "Evaluation":
    """The finished runs of exactly this config (any target unless ``config.targets``), newest per (target, seed)."""
    from dgmeta.tracking.model_registry import Evaluation

    chosen = {}
    for run in finished_children(config, client):
        if (config.targets and run.target not in config.targets) or not run.seed.isdigit() or int(run.seed) not in config.seeds:
            continue
        if run.tags.get("dgmeta.config_hash") == child_config_hash(config, run.target, int(run.seed)):
            chosen.setdefault((run.target, run.seed), run)
    if not chosen:
        raise ConfigError(
            f"no finished runs of this config in experiment {config.experiment!r}",
            "add the train stage to the spec's stages, or check experiment/targets/seeds",
        )
    return Evaluation(list(chosen.values()), config_hash=pipeline_config_hash(config))


def run_pipeline(
    spec: "PipelineSpec",
    config: RunConfig,
    train_fn: TrainFn | None = None,
    stages: list[str] | None = None,
    margin: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``stages`` (default: the spec's) in pipeline order; returns ``{stage: outcome}``.

    ``out["train"]`` is the ``ExperimentResult``, ``out["evaluate"]`` a summary dict,
    ``out["fewshot"]`` the few-shot reports (None when skipped), ``out["register"]`` a ``Decision``.
    """
    from dgmeta.tracking.model_registry import Evaluation, client_for

    echo = echo or default_echo
    wanted = list(stages or spec.stages)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}", f"choose from: {', '.join(STAGES)}")
    ordered = [s for s in STAGES if s in wanted]
    out: dict[str, Any] = {"stages": ordered}
    client = None
    result = None
    evaluation = None

    if "train" in ordered:
        result = (train_fn or default_train)(config)
        out["train"] = result
    if "evaluate" in ordered or "register" in ordered:
        client = client_for(config.tracking_uri)
        if result is not None:
            from dgmeta.tracking.compare import load_runs_by_id

            evaluation = Evaluation(
                load_runs_by_id([r.run_id for r in result.runs], client=client),
                config_hash=pipeline_config_hash(config),
                parent_run_id=result.parent_run_id,
            )
        else:
            evaluation = existing_evaluation(config, client)
    if "evaluate" in ordered:
        out["evaluate"] = evaluate_stage(evaluation, client, echo)
    if "fewshot" in ordered:
        out["fewshot"] = fewshot_stage(config, result, echo)
    if "register" in ordered:
        from dgmeta.orchestration.promotion import register_with_decision

        register = spec.register
        if register is None:
            raise ConfigError("stage 'register' needs a register: section", "add register: {model_name: NAME, margin: 0.5}")
        decision = register_with_decision(evaluation, register.model_name, register.margin if margin is None else margin, client)
        echo(f"register: {decision.one_line()}")
        out["register"] = decision
    return out


def evaluate_stage(evaluation: "Evaluation", client, echo: Callable[[str], None]) -> dict[str, Any]:
    from dgmeta.tracking.compare import AVERAGE, compare_runs
    from dgmeta.tracking.compare_report import render, to_markdown

    comparison = compare_runs(evaluation.runs, SUMMARY_GROUP)
    echo(render(comparison, "table").rstrip())
    summary: dict[str, Any] = {"per_target": {}, "excluded": [e.run.run_id for e in comparison.excluded]}
    for row in comparison.rows:
        if row.target == AVERAGE:
            summary.update(mean=row.summary.mean, std=row.summary.std, ci95=row.summary.ci95, n=row.summary.n)
        else:
            summary["per_target"][row.target] = row.summary.mean
    if evaluation.parent_run_id:
        client.log_text(evaluation.parent_run_id, to_markdown(comparison, "evaluation"), "evaluation/summary.md")
    return summary


def fewshot_stage(config: RunConfig, result, echo: Callable[[str], None]):
    try:
        from dgmeta.runs.fewshot_stage import fewshot_stage as run_stage
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("dgmeta.evaluation"):
            raise
        echo("fewshot: skipped — dgmeta.evaluation.fewshot is not available in this installation")
        return None
    if result is None:
        echo("fewshot: skipped — it needs the networks of the train stage in the same pipeline run")
        return None
    from dgmeta.runs.plan import resolve_plan

    reports = run_stage(config, resolve_plan(config), result)
    echo(f"fewshot: {len(reports)} target network(s) evaluated, metrics logged to their runs")
    return reports


def default_echo(text: str) -> None:
    from rich.console import Console

    Console(highlight=False, soft_wrap=True).print(text, markup=False)
