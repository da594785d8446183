"""`dgmeta compare`: mean ± 95% CI per target domain across MLflow runs, with paired deltas."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

FORMATS = ("table", "markdown", "csv", "html")
_SUFFIX_FORMAT = {".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".html": "html", ".htm": "html", ".txt": "table"}


def compare(
    experiment: Optional[List[str]] = typer.Option(None, "--experiment", "-e", help="MLflow experiment(s) to read (repeatable)", show_default="all"),
    filter_string: Optional[str] = typer.Option(None, "--filter", help="MLflow filter, e.g. \"tags.dgmeta.dataset = 'pacs'\"", show_default="every child run"),
    group_by: str = typer.Option(",".join(("base", "meta", "protocol", "backbone")), "--group-by", help="tag names (base, meta, ...), params.X or tags.X, comma-separated"),
    against: Optional[str] = typer.Option(None, "--against", help="reference group for deltas and paired tests, e.g. meta=none", show_default="no deltas"),
    select: str = typer.Option("training-domain", "--select", help="when a group holds several hyperparameter settings, which one each (target, seed) reports: training-domain | leave-one-domain-out | oracle (oracle uses target labels: an upper bound)"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table | markdown | csv | html", show_default="from --output's suffix, else table"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the report to this file", show_default="print it"),
    log: bool = typer.Option(False, "--log/--no-log", help="store the report as artifacts of a new MLflow `compare` run"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking store", show_default="$MLFLOW_TRACKING_URI, else sqlite:///mlruns.db"),
) -> None:
    """Compare test accuracy across runs: per target and on average, mean, std, 95% CI, n seeds.

    Failed runs and runs without test_acc are listed apart and never averaged. std is the
    sample standard deviation (n-1); the 95% CI uses Student's t with n-1 degrees of freedom.
    Several settings in one group (a sweep) are selected as DomainBed does: per seed the
    setting the --select rule prefers, then mean over seeds.

    Examples:

      dgmeta compare --group-by base --against base=erm

      dgmeta compare --experiment dgmeta --against meta=none --format html --output report.html

      dgmeta compare --filter "tags.dgmeta.dataset = 'pacs-mini'" --select leave-one-domain-out
    """
    from dgmeta.errors import ConfigError
    from dgmeta.tracking.compare import compare as run_compare
    from dgmeta.tracking.compare import parse_group_by
    from dgmeta.tracking.compare_report import log_report, print_table, render

    if fmt is None:
        fmt = _SUFFIX_FORMAT.get(output.suffix.lower(), "table") if output else "table"
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}", f"choose one of: {', '.join(FORMATS)}")
    keys = parse_group_by(group_by)
    comparison = run_compare(experiment or None, filter_string, keys, against, tracking_uri, select)
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
        settings = {"experiments": ",".join(experiment or []), "filter": filter_string, "group_by": ",".join(keys), "against": against, "select": comparison.selection}
        run_id = log_report(comparison, target_experiment, tracking_uri, settings)
        typer.echo(f"logged report to MLflow run {run_id} (experiment {target_experiment})")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
