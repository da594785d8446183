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

Selection over sweeps follows DomainBed's ``collect_results``: when a group holds several
hyperparameter settings ("draws": runs that differ in ``hp.*`` or training options), each
(target, seed) keeps the draw the selection rule prefers, and the seeds (trials) are then
averaged. Rules:

* ``training-domain``: the draw with the best mean source validation accuracy (``val_acc``).
* ``leave-one-domain-out``: the draw whose held-out-source accuracy is best: the mean, over the
  other domains v, of the same draw and seed's ``test_acc`` with v held out. DomainBed trains an
  extra model without both the target and v for this; dgmeta holds out one domain per run, so
  v's model trained on the target's labelled images too (stated in the report).
* ``oracle``: the draw with the best target test accuracy. Uses target labels: an upper bound,
  never a DG result, labelled as such.

Spread: sample standard deviation (n-1); 95% CI half-width from Student's t with n-1 dof.

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
STD_CONVENTION = "std: sample standard deviation (n-1) over seeds; 95% CI: Student t, n-1 dof"

SELECTIONS = {
    "training-domain": "training-domain validation (best mean source val_acc)",
    "leave-one-domain-out": "leave-one-domain-out (best mean accuracy on the held-out sources)",
    "oracle": "ORACLE: target test accuracy picks the draw (uses target labels; an upper bound, not a DG result)",
}
_SELECTION_ALIASES = {"val": "training-domain", "training_domain": "training-domain", "lodo": "leave-one-domain-out",
                      "loo": "leave-one-domain-out", "leave_one_domain_out": "leave-one-domain-out"}
LODO_CAVEAT = (
    "leave-one-domain-out scores a draw by its runs with each other domain held out; those runs trained on the "
    "target's labelled images (DomainBed trains a model without both), so this is weaker than DomainBed's protocol"
)
# Params that make two runs of a group different settings ("draws"); seed and target make trials and cells.
DRAW_PARAMS = ("base", "meta", "protocol", "backbone", "steps", "batch_size", "image_size", "train_image_size", "weights", "split", "shots", "eval_every", "precision", "average")


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

    @property
    def val_acc(self) -> float | None:
        value = self.metrics.get("val_acc")
        return value if value is not None and math.isfinite(value) else None

    @property
    def draw(self) -> tuple[tuple[str, str], ...]:
        """The hyperparameter setting: every ``hp.*`` param and the training options a sweep may vary."""
        return tuple(sorted((k, v) for k, v in self.params.items() if k.startswith("hp.") or k in DRAW_PARAMS))

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
    draws: int = 1  # settings the selection chose among
    chosen: str = ""  # the chosen setting(s), with how many seeds chose each


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
    selection: str = "training-domain"

    @property
    def swept(self) -> bool:
        """Whether any group had several settings to choose among."""
        return any(row.draws > 1 for row in self.rows)

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
                draws=row.draws,
                chosen=row.chosen,
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


def parse_selection(text: str | None) -> str:
    name = (text or "training-domain").strip().lower()
    name = _SELECTION_ALIASES.get(name, name)
    if name not in SELECTIONS:
        raise ConfigError(f"unknown selection rule {text!r}", f"choose one of: {', '.join(SELECTIONS)}")
    return name


def compare_runs(
    runs: Sequence[RunRecord],
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    against: str | None = None,
    select: str | None = None,
) -> Comparison:
    group_by = tuple(group_by)
    if not group_by:
        raise ConfigError("--group-by is empty", "give at least one key, e.g. --group-by base,meta")
    reference = parse_against(against, group_by)
    selection = parse_selection(select)
    usable, excluded = _split_usable(runs, group_by)
    comparison = Comparison(group_by=group_by, rows=[], excluded=excluded, against=reference, selection=selection)

    # group -> draw -> target -> seed -> run
    found: dict[tuple[str, ...], dict[tuple, dict[str, dict[str, RunRecord]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for run in usable:
        found[tuple(run.value_of(k) for k in group_by)][run.draw][run.target][run.seed] = run
    # group -> target -> seed -> accuracy in percent of the selected draw
    cells: dict[tuple[str, ...], dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for group in sorted(found):
        by_target, chosen = _select(group, found[group], selection, comparison.notes)
        if not by_target:
            continue
        cells[group] = by_target
        labels = _draw_labels(list(found[group]))
        _note_mixed_settings(group_by, group, list(found[group]), comparison.notes)
        for target in sorted(by_target):
            picks = [labels[draw] for draw in chosen[target].values()]
            rows_draws = len({d for d in found[group] if target in found[group][d]})
            summary = summarize(list(by_target[target].values()))
            comparison.rows.append(Row(group, target, summary, draws=rows_draws, chosen=_tally(picks) if rows_draws > 1 else ""))
        comparison.rows.append(Row(group, AVERAGE, _average_summary(group, by_target, comparison.notes), draws=len(found[group])))
    if reference is not None:
        _add_deltas(comparison, cells, reference)
    return comparison


def _select(group, draws, selection: str, notes: list[str]):
    """Per (target, seed), the test accuracy of the draw the rule prefers (DomainBed's per-trial choice)."""
    domains = sorted({t for by_target in draws.values() for t in by_target})
    by_target: dict[str, dict[str, float]] = defaultdict(dict)
    chosen: dict[str, dict[str, tuple]] = defaultdict(dict)
    unresolved: list[str] = []
    for target in domains:
        seeds = sorted({s for by_target in draws.values() for s in by_target.get(target, {})})
        for seed in seeds:
            candidates = [d for d in sorted(draws) if seed in draws[d].get(target, {})]
            if len(candidates) == 1:  # nothing to choose among: every rule keeps the one run
                best = candidates[0]
            else:
                scored = [(score, d) for d in candidates if (score := _score(draws[d], target, seed, selection, domains)) is not None]
                if not scored:
                    unresolved.append(f"{target} seed {seed}")
                    continue
                best = max(scored, key=lambda pair: pair[0])[1]  # first of equals: draws are sorted
            by_target[target][seed] = 100.0 * draws[best][target][seed].test_acc
            chosen[target][seed] = best
    if unresolved:
        why = {
            "training-domain": "no draw logged val_acc",
            "leave-one-domain-out": "no draw has this seed's runs on every other domain (held-out sources); sweep all targets",
            "oracle": "no draw has a test_acc",
        }[selection]
        notes.append(f"{'/'.join(group)}: {len(unresolved)} (target, seed) cell(s) with several draws left out ({', '.join(unresolved[:4])}): {why}")
    return dict(by_target), dict(chosen)


def _score(by_target: dict[str, dict[str, RunRecord]], target: str, seed: str, selection: str, domains: list[str]) -> float | None:
    run = by_target[target][seed]
    if selection == "training-domain":
        return run.val_acc
    if selection == "oracle":
        return run.test_acc
    held_out = [by_target.get(v, {}).get(seed) for v in domains if v != target]
    if not held_out or any(r is None for r in held_out):
        return None
    return sum(r.test_acc for r in held_out) / len(held_out)


# Run options that usually define what is compared rather than a hyperparameter to select.
_GROUPING_OPTIONS = ("base", "meta", "protocol", "backbone")


def _note_mixed_settings(group_by: tuple[str, ...], group: tuple[str, ...], draws: list[tuple], notes: list[str]) -> None:
    for key in _GROUPING_OPTIONS:
        values = sorted({dict(d).get(key) for d in draws} - {None})
        if key not in group_by and len(values) > 1:
            notes.append(
                f"{'/'.join(group)} mixes {key}={'/'.join(values)}: the selection rule chose among them per (target, seed); "
                f"group by {key} too (--group-by {','.join([*group_by, key])}) to report them apart"
            )


def _draw_labels(draws: list[tuple]) -> dict[tuple, str]:
    """Each draw named by the params that differ between the group's draws, e.g. ``lr=0.01``."""
    varying = sorted({k for d in draws for k, _ in d if len({dict(x).get(k) for x in draws}) > 1})
    return {d: " ".join(f"{k.removeprefix('hp.')}={dict(d).get(k, '-')}" for k in varying) or "defaults" for d in draws}


def _tally(labels: list[str]) -> str:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return "; ".join(f"{label} ({n} seed{'s' if n > 1 else ''})" for label, n in counts.items())


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
        key = (tuple(run.value_of(k) for k in group_by), run.draw, run.target, run.seed)
        previous = newest.get(key)
        if previous is not None:
            older, run = (previous, run) if previous.start_time <= run.start_time else (run, previous)
            excluded.append(Excluded(older, f"superseded by newer run {run.run_id[:8]} (same group, setting, target, seed)"))
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
    references = [group for group in cells if group[position] == value]
    if not references:
        seen = sorted({group[position] for group in cells})
        comparison.notes.append(f"no runs with {key}={value} (runs have {key}={', '.join(seen) or 'nothing'}): no deltas")
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
    for group in cells:
        if group[position] == value or any(r.n_pairs for r in comparison.rows if r.group == group):
            continue
        comparison.notes.append(_why_unpaired(comparison.group_by, group, references, cells, position))


def _why_unpaired(group_by: tuple[str, ...], group: tuple[str, ...], references: list[tuple[str, ...]], cells, position: int) -> str:
    """One line saying why ``group`` shares no (target, seed) with its reference, and what to run or regroup."""
    key = group_by[position]
    this, ref_value = f"{key}={group[position]}", references[0][position]
    that = f"{key}={ref_value}"
    ref_group = group[:position] + (ref_value,) + group[position + 1 :]
    if ref_group in cells:
        mine = sorted((t, s) for t in cells[group] for s in cells[group][t])
        theirs = sorted((t, s) for t in cells[ref_group] for s in cells[ref_group][t])
        return (
            f"{this} and {that} share no (target, seed): {this} ran {_pairs_text(mine)}, {that} ran {_pairs_text(theirs)}; "
            "Δ is unpaired and untested: run both with the same --target and --seed"
        )
    # the reference exists only with other values of some other group-by key: name them
    nearest = min(references, key=lambda ref: sum(a != b for i, (a, b) in enumerate(zip(group, ref)) if i != position))
    differing = [i for i, (a, b) in enumerate(zip(group, nearest)) if a != b and i != position]
    facts = "; ".join(
        f"{this} ran {group_by[i]}={group[i]}, {that} ran {group_by[i]}={'/'.join(sorted({r[i] for r in references}))}" for i in differing
    )
    names = ", ".join(group_by[i] for i in differing)
    fixes = " and ".join(f"--{group_by[i].split('.')[-1].replace('_', '-')} {group[i]}" for i in differing)
    return (
        f"no Δ for {this}: {facts}: pairs need the same {names}; add {fixes} to the {that} run, "
        f"or leave {names} out of --group-by to pair across {'them' if len(differing) > 1 else 'it'}"
    )


def _pairs_text(pairs: list[tuple[str, str]]) -> str:
    by_target: dict[str, list[str]] = defaultdict(list)
    for target, seed in pairs:
        by_target[target].append(seed)
    return ", ".join(f"{t} seed {','.join(seeds)}" for t, seeds in by_target.items())


def compare(
    experiments: Sequence[str] | None = None,
    filter_string: str | None = None,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    against: str | None = None,
    tracking_uri: str | None = None,
    select: str | None = None,
) -> Comparison:
    return compare_runs(load_runs(experiments, filter_string, tracking_uri), group_by, against, select)


def parse_group_by(text: str | Sequence[str] | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_GROUP_BY
    items = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    return tuple(item.strip() for item in items if item.strip())
