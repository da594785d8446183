"""Compare results across MLflow child runs: mean, std, 95% CI and paired deltas per target domain.

One child run = one (target, seed). Runs are grouped by tag values (``--group-by
base,meta,protocol,backbone``); within a group each target gets the mean over seeds and the
"avg" row averages the targets per seed first (over the seeds that cover every target of the
group), so its spread is the seed-to-seed spread of the domain average, as DG papers report.

``--against meta=none`` compares every group with the group that differs only by that key:
delta = mean - reference mean, plus a paired t-test over the (target, seed) pairs both groups
ran (per target: over seeds; on "avg": over all common pairs). Runs that failed, are still
running or lack ``test_acc`` are listed separately and never averaged. When one group has two
finished runs for the same (target, seed) (a rerun), the newest counts and the older is listed
as superseded.

Accuracies are logged as fractions and reported in percent.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from dgmeta.errors import ConfigError, TrackingError
from dgmeta.tracking.stats import Summary, paired_t_test, summarize

CHILD_FILTER = "tags.`dgmeta.role` = 'child'"
DEFAULT_GROUP_BY = ("base", "meta", "protocol", "backbone")
AVERAGE = "avg"


@dataclass
class RunRecord:
    run_id: str
    experiment: str
    status: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]

    @property
    def target(self) -> str:
        return self.tags.get("dgmeta.target", "?")

    @property
    def seed(self) -> str:
        return self.tags.get("dgmeta.seed", "?")

    @property
    def test_acc(self) -> float | None:
        value = self.metrics.get("test_acc")
        return value if value is not None and math.isfinite(value) else None

    def value_of(self, key: str) -> str:
        """A group-by key: ``params.X``, ``tags.X``, or a short dgmeta tag name (``base``)."""
        if key.startswith("params."):
            return self.params.get(key[len("params.") :], "-")
        if key.startswith("tags."):
            return self.tags.get(key[len("tags.") :], "-")
        return self.tags.get(f"dgmeta.{key}", "-")


@dataclass
class Row:
    group: tuple[str, ...]
    target: str
    summary: Summary
    delta: float | None = None  # percentage points against the reference group
    p_value: float | None = None
    n_pairs: int = 0
    is_reference: bool = False


@dataclass
class Excluded:
    run: RunRecord
    reason: str


@dataclass
class Comparison:
    group_by: tuple[str, ...]
    rows: list[Row]
    excluded: list[Excluded] = field(default_factory=list)
    against: tuple[str, str] | None = None
    notes: list[str] = field(default_factory=list)

    def groups(self) -> list[tuple[str, ...]]:
        return list(dict.fromkeys(row.group for row in self.rows))

    def targets(self) -> list[str]:
        names = dict.fromkeys(row.target for row in self.rows if row.target != AVERAGE)
        return sorted(names) + [AVERAGE]

    def row(self, group: tuple[str, ...], target: str) -> Row | None:
        return next((r for r in self.rows if r.group == group and r.target == target), None)

    def records(self) -> list[dict[str, Any]]:
        """Long format, one dict per (group, target): what CSV and the HTML table show."""
        out = []
        for row in self.rows:
            record: dict[str, Any] = dict(zip(self.group_by, row.group))
            record.update(
                target=row.target,
                n=row.summary.n,
                mean=row.summary.mean,
                std=row.summary.std,
                ci95=row.summary.ci95,
                delta=row.delta,
                p_value=row.p_value,
                n_pairs=row.n_pairs,
                reference=row.is_reference,
            )
            out.append(record)
        return out


# -- loading -----------------------------------------------------------------------------


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    from dgmeta.tracking.mlflow_run import resolve_tracking_uri

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def load_runs(
    experiments: Sequence[str] | None = None,
    filter_string: str | None = None,
    tracking_uri: str | None = None,
    client=None,
) -> list[RunRecord]:
    """Every child run of the named experiments (all experiments when none) matching the filter."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    client = client or _client(tracking_uri)
    try:
        if experiments:
            found = []
            for name in experiments:
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    known = [e.name for e in client.search_experiments()]
                    raise ConfigError(f"no MLflow experiment named {name!r}", f"known experiments: {', '.join(known) or 'none yet'}")
                found.append(experiment)
        else:
            found = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
        names = {e.experiment_id: e.name for e in found}
        query = CHILD_FILTER + (f" and {filter_string}" if filter_string and filter_string.strip() else "")
        runs, token = [], None
        while names:
            page = client.search_runs(list(names), filter_string=query, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    except MlflowException as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if "filter" in first.lower() or "invalid" in first.lower() or "parse" in first.lower():
            raise ConfigError(f"invalid --filter {filter_string!r}: {first}", "write MLflow syntax, e.g. \"tags.dgmeta.dataset = 'pacs'\"") from None
        raise TrackingError(f"cannot query MLflow: {first}", "check --tracking-uri / MLFLOW_TRACKING_URI") from None
    return [_record(run, names.get(run.info.experiment_id, run.info.experiment_id)) for run in runs]


def load_runs_by_id(run_ids: Sequence[str], tracking_uri: str | None = None, client=None) -> list[RunRecord]:
    client = client or _client(tracking_uri)
    out = []
    for run_id in run_ids:
        run = client.get_run(run_id)
        out.append(_record(run, client.get_experiment(run.info.experiment_id).name))
    return out


def _record(run, experiment: str) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        experiment=experiment,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
    )


# -- statistics --------------------------------------------------------------------------


def parse_against(text: str | None, group_by: Sequence[str]) -> tuple[str, str] | None:
    if not text:
        return None
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise ConfigError(f"--against {text!r} is not key=value", "write e.g. --against meta=none")
    if key not in group_by:
        raise ConfigError(f"--against key {key!r} is not a --group-by key", f"add it: --group-by {','.join([*group_by, key])}")
    return key, value


def compare_runs(
    runs: Sequence[RunRecord],
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    against: str | None = None,
) -> Comparison:
    group_by = tuple(group_by)
    if not group_by:
        raise ConfigError("--group-by is empty", "give at least one key, e.g. --group-by base,meta")
    reference = parse_against(against, group_by)
    usable, excluded = _split_usable(runs, group_by)
    comparison = Comparison(group_by=group_by, rows=[], excluded=excluded, against=reference)

    # group -> target -> seed -> accuracy in percent
    cells: dict[tuple[str, ...], dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for run in usable:
        cells[tuple(run.value_of(k) for k in group_by)][run.target][run.seed] = 100.0 * run.test_acc
    for group in sorted(cells):
        by_target = cells[group]
        for target in sorted(by_target):
            comparison.rows.append(Row(group, target, summarize(list(by_target[target].values()))))
        comparison.rows.append(Row(group, AVERAGE, _average_summary(group, by_target, comparison.notes)))
    if reference is not None:
        _add_deltas(comparison, cells, reference)
    return comparison


def _split_usable(runs: Sequence[RunRecord], group_by: Sequence[str]) -> tuple[list[RunRecord], list[Excluded]]:
    excluded: list[Excluded] = []
    newest: dict[tuple, RunRecord] = {}
    for run in runs:
        if run.status != "FINISHED":
            excluded.append(Excluded(run, f"status {run.status}"))
            continue
        if run.test_acc is None:
            excluded.append(Excluded(run, "no test_acc metric"))
            continue
        key = (tuple(run.value_of(k) for k in group_by), run.target, run.seed)
        previous = newest.get(key)
        if previous is not None:
            older, run = (previous, run) if previous.start_time <= run.start_time else (run, previous)
            excluded.append(Excluded(older, f"superseded by newer run {run.run_id[:8]} (same group, target, seed)"))
        newest[key] = run
    return list(newest.values()), excluded


def _average_summary(group: tuple[str, ...], by_target: dict[str, dict[str, float]], notes: list[str]) -> Summary:
    targets = sorted(by_target)
    seeds = set.intersection(*(set(v) for v in by_target.values()))
    if seeds:
        per_seed = [sum(by_target[t][s] for t in targets) / len(targets) for s in sorted(seeds)]
        return summarize(per_seed)
    notes.append(f"{'/'.join(group)}: no seed covers every target; avg is the mean of target means, without spread")
    return Summary(0, sum(summarize(list(v.values())).mean for v in by_target.values()) / len(targets), math.nan, math.nan)


def _add_deltas(comparison: Comparison, cells, reference: tuple[str, str]) -> None:
    key, value = reference
    position = comparison.group_by.index(key)
    if not any(group[position] == value for group in cells):
        comparison.notes.append(f"no runs with {key}={value}: no deltas")
        return
    for row in comparison.rows:
        group = row.group
        if group[position] == value:
            row.is_reference = True
            continue
        ref_group = group[:position] + (value,) + group[position + 1 :]
        ref_row = comparison.row(ref_group, row.target)
        if ref_group not in cells or ref_row is None:
            continue
        row.delta = row.summary.mean - ref_row.summary.mean
        targets = [row.target] if row.target != AVERAGE else sorted(cells[group])
        pairs = [
            (cells[group][t][s], cells[ref_group][t][s])
            for t in targets
            for s in sorted(cells[group].get(t, {}))
            if s in cells[ref_group].get(t, {})
        ]
        row.n_pairs = len(pairs)
        if pairs:
            _, p = paired_t_test([a for a, _ in pairs], [b for _, b in pairs])
            row.p_value = None if math.isnan(p) else p
    if not any(r.n_pairs for r in comparison.rows):
        comparison.notes.append("no (target, seed) pair is shared with the reference: deltas are unpaired, no test")


def compare(
    experiments: Sequence[str] | None = None,
    filter_string: str | None = None,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    against: str | None = None,
    tracking_uri: str | None = None,
) -> Comparison:
    return compare_runs(load_runs(experiments, filter_string, tracking_uri), group_by, against)


def parse_group_by(text: str | Sequence[str] | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_GROUP_BY
    items = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    return tuple(item.strip() for item in items if item.strip())


# -- text renderings ---------------------------------------------------------------------


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
    return columns


def row_cells(comparison: Comparison, row: Row) -> list[str]:
    out = [*row.group, row.target, str(row.summary.n), _fmt(row.summary.mean), _fmt(row.summary.std), _fmt(row.summary.ci95)]
    if comparison.against:
        out += ["ref" if row.is_reference else _fmt(row.delta, signed=True), _p(row.p_value)]
    return out


def excluded_lines(comparison: Comparison) -> list[list[str]]:
    return [[e.run.run_id, e.run.experiment, e.run.status, e.run.target, e.run.seed, e.reason] for e in comparison.excluded]


EXCLUDED_COLUMNS = ["run_id", "experiment", "status", "target", "seed", "why not averaged"]


def to_markdown(comparison: Comparison, title: str = "dgmeta comparison") -> str:
    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
        return out

    lines = [f"# {title}", "", "Test accuracy (%) of the checkpoint selected by training-domain validation; mean over seeds, "
             "sample std, 95% CI half-width (Student t, n-1 dof).", ""]
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
    fields = [*comparison.group_by, "target", "n", "mean", "std", "ci95", "delta", "p_value", "n_pairs", "reference"]
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
        columns = columns[:-2] + ["Δ", "p"]
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
        console.print(table)
    else:
        console.print("no finished runs with test_acc")
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
