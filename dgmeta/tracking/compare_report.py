"""The comparison as text: the plain/rich table, markdown, CSV, and a ``compare`` run holding all three plus HTML.

The numbers come from :mod:`dgmeta.tracking.compare`; this module only formats them, so a new format is one
function here (HTML lives in :mod:`dgmeta.tracking.report_html`).
"""

from __future__ import annotations

import math

from dgmeta.errors import ConfigError
from dgmeta.tracking.compare import AVERAGE, LODO_CAVEAT, SELECTIONS, STD_CONVENTION, Comparison, Row

def _fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def table_columns(comparison: Comparison) -> list[str]:
    columns = [*comparison.group_by, "target", "n", "mean %", "std", "95% CI ±"]
    if comparison.against:
        key, value = comparison.against
        columns += [f"Δ vs {key}={value}", "p (paired)"]
    if comparison.swept:
        columns += ["draws", "selected setting"]
    return columns


def row_cells(comparison: Comparison, row: Row) -> list[str]:
    out = [*row.group, row.target, str(row.summary.n), _fmt(row.summary.mean), _fmt(row.summary.std), _fmt(row.summary.ci95)]
    if comparison.against:
        out += ["ref" if row.is_reference else _fmt(row.delta, signed=True), _p(row.p_value)]
    if comparison.swept:
        out += [str(row.draws), row.chosen or "-"]
    return out


def selection_line(comparison: Comparison) -> str:
    """What chose each reported number, and the spread convention: the first line of every report."""
    head = f"selection: {SELECTIONS[comparison.selection]}"
    if comparison.swept:
        head += "; per seed (trial) the best draw, then mean over seeds"
    return f"{head}. {STD_CONVENTION}"


def excluded_lines(comparison: Comparison) -> list[list[str]]:
    return [[e.run.run_id, e.run.experiment, e.run.status, e.run.target, e.run.seed, e.reason] for e in comparison.excluded]


EXCLUDED_COLUMNS = ["run_id", "experiment", "status", "target", "seed", "why not averaged"]


def to_markdown(comparison: Comparison, title: str = "dgmeta comparison") -> str:
    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
        return out

    lines = [f"# {title}", "", "Test accuracy (%) of the checkpoint selected by training-domain validation; mean over seeds.", "",
             selection_line(comparison), ""]
    if comparison.selection == "leave-one-domain-out" and comparison.swept:
        lines += [LODO_CAVEAT, ""]
    if comparison.rows:
        lines += table(table_columns(comparison), [row_cells(comparison, r) for r in comparison.rows])
    else:
        lines.append("_No finished runs with test_acc._")
    for note in comparison.notes:
        lines += ["", f"> {note}"]
    if comparison.excluded:
        lines += ["", "## Runs not averaged", ""]
        lines += table(EXCLUDED_COLUMNS, excluded_lines(comparison))
    return "\n".join(lines) + "\n"


def to_csv(comparison: Comparison) -> str:
    import csv
    import io

    buffer = io.StringIO()
    records = comparison.records()
    fields = [*comparison.group_by, "target", "n", "mean", "std", "ci95", "delta", "p_value", "n_pairs", "reference", "draws", "chosen"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in record.items()})
    return buffer.getvalue()


def print_table(comparison: Comparison, console=None) -> None:
    """A rich table. Group keys with one value across all rows move to the title; cells are never truncated."""
    import sys

    from rich.console import Console
    from rich.table import Table

    # off a terminal rich assumes 80 columns; a pipe or a file has no width worth cutting numbers for
    console = console or (Console() if sys.stdout.isatty() else Console(width=240))
    columns = table_columns(comparison)
    cells = [row_cells(comparison, row) for row in comparison.rows]
    keys = len(comparison.group_by)
    constant = [i for i in range(keys) if cells and len({c[i] for c in cells}) == 1]
    shown = [i for i in range(len(columns)) if i not in constant]
    fixed = ", ".join(f"{columns[i]}={cells[0][i]}" for i in constant)
    title = "test accuracy (%) per target, mean over seeds" + (f"\n{fixed}" if fixed else "")
    if comparison.against:
        key, value = comparison.against
        title += f"\nΔ: percentage points against {key}={value}; p: paired t-test over (target, seed)"
        at = columns.index(f"Δ vs {key}={value}")
        columns = columns[:at] + ["Δ", "p"] + columns[at + 2 :]
    table = Table(title=title)
    for index in shown:
        width = max([len(c[index]) for c in cells] + [min(len(columns[index]), 8)])
        numeric = index > keys
        table.add_column(columns[index], justify="right" if numeric else "left", no_wrap=True, min_width=width)
    previous = None
    for row, line in zip(comparison.rows, cells):
        if previous is not None and row.group != previous:
            table.add_section()
        previous = row.group
        table.add_row(*(line[i] for i in shown), style="bold" if row.target == AVERAGE else None)
    if comparison.rows:
        console.print(selection_line(comparison), soft_wrap=True)
        console.print(table)
    else:
        console.print("no results: see the note(s) below" if comparison.notes else "no finished runs with test_acc")
    if comparison.selection == "leave-one-domain-out" and comparison.swept:
        console.print(f"note: {LODO_CAVEAT}", soft_wrap=True)
    for note in comparison.notes:
        console.print(f"note: {note}", soft_wrap=True)
    if comparison.excluded:
        skipped = Table(title="runs not averaged")
        for column in EXCLUDED_COLUMNS:
            skipped.add_column(column, overflow="fold")
        for line in excluded_lines(comparison):
            skipped.add_row(*line)
        console.print(skipped)


def render(comparison: Comparison, fmt: str) -> str:
    """The report as text in ``table`` (plain), ``markdown``, ``csv`` or ``html``."""
    if fmt == "markdown":
        return to_markdown(comparison)
    if fmt == "csv":
        return to_csv(comparison)
    if fmt == "html":
        from dgmeta.tracking.report_html import to_html

        return to_html(comparison)
    if fmt == "table":
        import io

        from rich.console import Console

        buffer = io.StringIO()
        print_table(comparison, Console(file=buffer, width=200, color_system=None))
        return buffer.getvalue()
    raise ConfigError(f"unknown --format {fmt!r}", "choose one of: table, markdown, csv, html")


def log_report(comparison: Comparison, experiment: str, tracking_uri: str | None = None, settings: dict | None = None) -> str:
    """Store the report (markdown, csv, html) as artifacts of a new ``compare`` run; returns its id."""
    from dgmeta.tracking.mlflow_run import Tracking

    tracking = Tracking(tracking_uri, experiment)
    run = tracking.start_run("compare", {"dgmeta.role": "compare"})
    try:
        run.log_params({k: v for k, v in (settings or {}).items() if v not in (None, "", [])})
        run.log_text(to_markdown(comparison), "compare/report.md")
        run.log_text(to_csv(comparison), "compare/report.csv")
        from dgmeta.tracking.report_html import to_html

        run.log_text(to_html(comparison), "compare/report.html")
        run.finish()
    except BaseException:
        run.finish("FAILED")
        raise
    return run.run_id
