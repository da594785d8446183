"""`dgmeta retrain pipelines/X.yaml [--force] [--margin 0.5]`: champion / challenger retraining."""

from __future__ import annotations

from typing import List, Optional

import typer


def retrain(
    pipeline: str = typer.Argument(..., help="pipeline spec with a register: section"),
    force: bool = typer.Option(False, "--force/--no-force", help="retrain even if neither data nor config changed since the champion"),
    margin: Optional[float] = typer.Option(None, "--margin", help="percentage points of mean test_acc the challenger must gain", show_default="the spec's register.margin"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking store", show_default="the spec's, else $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N", show_default="the spec's, else auto"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="hyperparameter override key=value (repeatable)", show_default="the spec's"),
    quiet: bool = typer.Option(False, "--quiet/--no-quiet", "-q", help="no progress bars"),
) -> None:
    """Train a challenger, compare it with the registered champion and promote it only if it is better by the margin.

    Examples:

      dgmeta retrain pipelines/pacs_retrain_weekly.yaml

      dgmeta retrain pipelines/pacs_retrain_weekly.yaml --force --margin 0.5
    """
    from dgmeta.orchestration.retrain import retrain as run_retrain

    overrides = {"tracking_uri": tracking_uri, "device": device, "quiet": True if quiet else None}
    decision = run_retrain(pipeline, force=force, margin=margin, cli_overrides=overrides, set_overrides=list(set_ or []))
    typer.echo(decision.one_line())


def register(app: typer.Typer) -> None:
    app.command("retrain")(retrain)
