"""`dgmeta fewshot MODEL --data DATASET --domain DOMAIN`: cross-domain few-shot evaluation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

DEFAULT_METHODS = ("prototype", "linear", "finetune")
DEFAULT_EXPERIMENT = "dgmeta-fewshot"


def fewshot(
    model: str = typer.Argument(..., help="network.pt path, MLflow run id, or registered model: NAME, NAME@ALIAS, models:/NAME/VERSION"),
    data: str = typer.Option(..., "--data", help="dataset: pacs | office_home | domainnet | pacs-mini | folder:PATH"),
    domain: str = typer.Option(..., "--domain", help="the domain to evaluate on (ideally one the model never saw)"),
    ways: str = typer.Option("5", "--ways", help="classes per episode, or 'all'"),
    shots: str = typer.Option("1,5", "--shots", help="support images per class, comma-separated"),
    queries: int = typer.Option(15, "--queries", help="query images per class"),
    episodes: int = typer.Option(600, "--episodes", help="episodes per shot count"),
    method: Optional[List[str]] = typer.Option(None, "--method", help="prototype | linear | finetune | maml (repeatable or comma-separated); maml adapts the backbone per episode (seconds each: use fewer --episodes)", show_default=",".join(DEFAULT_METHODS)),
    finetune_all: bool = typer.Option(False, "--finetune-all/--no-finetune-all", help="finetune fine-tunes every layer on the support images (seconds per episode: use fewer --episodes)"),
    seed: int = typer.Option(0, "--seed", help="episode seed; the same seed gives the same episodes for every method and model"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="folder holding the datasets", show_default="$DGMETA_DATA, else ./data"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="input size in pixels", show_default="the model's"),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="decoded-image cache", show_default="$DGMETA_CACHE, else ~/.cache/dgmeta"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking store", show_default="$MLFLOW_TRACKING_URI, else sqlite:///mlruns.db"),
    experiment: str = typer.Option(DEFAULT_EXPERIMENT, "--experiment", help="MLflow experiment of the few-shot run"),
    output: Optional[Path] = typer.Option(None, "--output", help="also write the report as Markdown to this file", show_default="none"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N: where the network embeds and adapts (auto: CUDA when present)"),
    quiet: bool = typer.Option(False, "--quiet/--no-quiet", "-q", help="no progress bars"),
) -> None:
    """Few-shot accuracy (mean ± 95% CI over shared episodes) of a trained model on one domain.

    Examples:

      dgmeta fewshot RUN_ID --data pacs --domain sketch --ways all --shots 1,5

      dgmeta fewshot models:/pacs-erm@champion --data pacs --domain sketch --method maml --episodes 100
    """
    from dgmeta.data import create_dataset, labels_of, load_images
    from dgmeta.errors import ConfigError
    from dgmeta.evaluation.fewshot import parse_shots, resolve_model, run_fewshot
    from dgmeta.evaluation.fewshot.runner import build_methods, build_samplers, check_episodes
    from dgmeta.evaluation.fewshot.sampler import parse_ways
    from dgmeta.models.checkpoint import load_network
    from dgmeta.tracking.mlflow_run import Tracking, resolve_tracking_uri

    from dgmeta.device import configure_device, device_label, resolve_device

    # Everything a user can get wrong is checked before images are decoded or embedded.
    run_device = resolve_device(device)
    configure_device(run_device)
    shot_list = parse_shots(shots)
    ways_value = parse_ways(ways)
    check_episodes(episodes)
    method_names = _split_methods(method) or list(DEFAULT_METHODS)
    if image_size is not None and image_size < 16:
        raise ConfigError(f"--image-size {image_size} is too small", "use at least 16 pixels, or leave it out to use the model's")
    uri = resolve_tracking_uri(tracking_uri)
    model_path = resolve_model(model, tracking_uri=uri)
    network, meta = load_network(model_path)
    network.to(run_device)
    build_methods(method_names, network, meta, finetune_all)
    dataset = create_dataset(data, data_root)
    dataset.check_domain(domain)
    samples = dataset.samples(domain, "test")
    labels = labels_of(samples)
    build_samplers(labels, ways_value, shot_list, queries, seed, dataset.classes, domain)
    _warn_if_seen(meta, domain)
    tracking = Tracking(uri, experiment)  # opened before the long part, so a bad store fails fast

    size = int(image_size or meta.get("image_size") or 128)
    images = load_images(samples, size, cache_dir=cache_dir, progress=not quiet)
    report = run_fewshot(
        network, meta, images, labels,
        ways=ways_value, shots=shot_list, queries=queries, episodes=episodes, methods=method_names,
        seed=seed, finetune_all=finetune_all, progress=not quiet, class_names=dataset.classes, domain=domain,
    )
    report.info = {
        "model": model,
        "backbone": meta.get("backbone", "?"),
        "trained on": f"{meta.get('dataset', '?')} ({', '.join(_training_domains(meta)) or '?'})",
        "evaluated on": f"{dataset.name} / {domain} ({len(samples)} images, {size}px)",
    }

    params = {
        "ways": report.ways, "shots": ",".join(map(str, shot_list)), "queries": queries, "episodes": episodes,
        "methods": ",".join(method_names), "finetune_all": finetune_all, "seed": seed, "image_size": size,
        "backbone": meta.get("backbone"), "model_dataset": meta.get("dataset"), "model_target": meta.get("target"),
        "model_meta_mode": meta.get("meta_mode"), "device": device, "device.resolved": device_label(run_device),
    }
    tags = {
        "dgmeta.fewshot.model": model,
        "dgmeta.fewshot.dataset": dataset.name,
        "dgmeta.fewshot.domain": domain,
        "dgmeta.fewshot.model_path": str(model_path),
    }
    run_id = _log_run(tracking, f"fewshot {domain}", tags, params, report)

    print_report(report)
    print(f"MLflow run: {run_id}")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report.markdown())
        print(f"report written to {output}")


def _log_run(tracking, name: str, tags: dict, params: dict, report) -> str:
    from dgmeta.evaluation.fewshot import log_fewshot

    run = tracking.start_run(name, tags)
    try:
        run.log_params(params)
        log_fewshot(report, run_id=run.run_id, client=run.client)
        run.log_text(report.markdown(), "fewshot_report.md")
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish()
    return run.run_id


def _split_methods(values: Optional[List[str]]) -> list[str]:
    """``--method a --method b`` and ``--method a,b`` alike."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def _training_domains(meta: dict) -> list[str]:
    if meta.get("train_domains"):
        return list(meta["train_domains"])
    return [d for d in meta.get("domains") or [] if d != meta.get("target")]


def _warn_if_seen(meta: dict, domain: str) -> None:
    seen = _training_domains(meta)
    if domain in seen:
        print(
            f"warning: the model was trained on {domain!r} (training domains: {', '.join(seen)}); "
            "this is not a cross-domain evaluation",
            file=sys.stderr,
        )


def print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{report.ways}-way few-shot, {report.queries} queries/class"
    if report.info.get("evaluated on"):
        title += f" · {report.info['evaluated on']}"
    table = Table(title=title)
    for column in ("method", "shots", "accuracy %", "± 95% CI", "episodes", "s/episode"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in report.results:
        table.add_row(
            r.method, str(r.shots), f"{100 * r.accuracy:.2f}", f"{100 * r.ci95:.2f}", str(r.episodes), f"{r.seconds_per_episode:.4f}"
        )
    Console(file=sys.stdout).print(table)


def register(app: typer.Typer) -> None:
    app.command("fewshot")(fewshot)
