"""The few-shot stage of `dgmeta run --fewshot` / a pipeline: each trained model is evaluated
with N-way K-shot episodes on its held-out target domain and the numbers go to its own run."""

from __future__ import annotations

from dgmeta.runs.config import RunConfig


def fewshot_stage(config: RunConfig, plan, result, options: dict | None = None) -> list:
    import mlflow

    from dgmeta.data import labels_of, load_images
    from dgmeta.device import resolve_device
    from dgmeta.evaluation.fewshot import log_fewshot, run_fewshot
    from dgmeta.models.checkpoint import load_network
    from dgmeta.tracking.mlflow_run import resolve_tracking_uri

    opts = {"ways": "all", "shots": [1, 5], "queries": 15, "episodes": 600, "methods": ["prototype", "linear"], "seed": 0}
    opts.update(config.fewshot or {})
    opts.update(options or {})
    mlflow.set_tracking_uri(resolve_tracking_uri(config.tracking_uri))
    reports = []
    for run in result.runs:
        network, meta = load_network(run.model_path)
        network.to(resolve_device(config.device))
        samples = plan.dataset.samples(run.target, "test")
        images = load_images(samples, int(meta["image_size"]), cache_dir=config.cache_dir, progress=not config.quiet)
        report = run_fewshot(
            network, meta, images, labels_of(samples),
            ways=opts["ways"], shots=list(opts["shots"]), queries=int(opts["queries"]),
            episodes=int(opts["episodes"]), methods=list(opts["methods"]), seed=int(opts["seed"]),
            progress=not config.quiet,
        )
        with mlflow.start_run(run_id=run.run_id):
            log_fewshot(report)
        reports.append(report)
    return reports
