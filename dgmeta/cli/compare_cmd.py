"""`dgmeta compare`: mean ± 95% CI per target domain across MLflow runs, with paired deltas."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

FORMATS = ("table", "markdown", "csv", "html")
_SUFFIX_FORMAT = {".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".html": "html", ".htm": "html", ".txt": "table"}


def compare(
    experiment: Optional[List[str]] = typer.Option(None, "--experiment", "-e", help="MLflow experiment(s) to read (repeatable) [all]"),
    filter_string: Optional[str] = typer.Option(None, "--filter", help="MLflow filter, e.g. \"tags.dgmeta.dataset = 'pacs'\""),
    group_by: str = typer.Option(",".join(("base", "meta", "protocol", "backbone")), "--group-by", help="tag names (base, meta, ...), params.X or tags.X, comma-separated"),
    against: Optional[str] = typer.Option(None, "--against", help="reference group for deltas and paired tests, e.g. meta=none"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table | markdown | csv | html [table, or from --output's suffix]"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the report to this file"),
    log: bool = typer.Option(False, "--log", help="store the report as artifacts of a new MLflow `compare` run"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db"),
) -> None:
    """Compare test accuracy across runs: per target and on average, mean, std, 95% CI, n seeds.

    Failed runs and runs without test_acc are listed apart and never averaged. Statistics use
    Student's t with n-1 degrees of freedom (scipy when installed, otherwise an exact
    incomplete-beta implementation).
    """
    from dgmeta.errors import ConfigError
    from dgmeta.tracking.compare import compare as run_compare
    from dgmeta.tracking.compare import log_report, parse_group_by, print_table, render

    if fmt is None:
        fmt = _SUFFIX_FORMAT.get(output.suffix.lower(), "table") if output else "table"
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}", f"choose one of: {', '.join(FORMATS)}")
    keys = parse_group_by(group_by)
    comparison = run_compare(experiment or None, filter_string, keys, against, tracking_uri)
    if output is not None:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(render(comparison, fmt))
        except OSError as exc:
            raise ConfigError(f"cannot write {output}: {exc.strerror or exc}", "choose a writable --output path") from None
        typer.echo(f"wrote {output} ({fmt}, {len(comparison.groups())} group(s), {len(comparison.excluded)} run(s) not averaged)")
    elif fmt == "table":
        print_table(comparison)
    else:
        typer.echo(render(comparison, fmt), nl=False)
    if log:
        target_experiment = (experiment or ["dgmeta"])[0]
        settings = {"experiments": ",".join(experiment or []), "filter": filter_string, "group_by": ",".join(keys), "against": against}
        run_id = log_report(comparison, target_experiment, tracking_uri, settings)
        typer.echo(f"logged report to MLflow run {run_id} (experiment {target_experiment})")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
