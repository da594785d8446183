"""Champion / challenger: register a candidate and promote it only if it beats the champion by a margin.

The comparison is paired: both are scored on the (target, seed) runs they have in common, so
a candidate evaluated on easier targets or luckier seeds cannot win by that alone. The gain
is in percentage points of mean test accuracy and must be *more than* the margin. A candidate
evaluated on another dataset or protocol, or sharing no (target, seed) with the champion, is
never promoted (run ``dgmeta retrain``, which trains on the champion's targets and seeds).

Every candidate becomes a registered version tagged with the decision; the ``champion`` alias
moves to it when promoted, otherwise ``challenger`` points to it. A short markdown report is
logged to the candidate's parent run (``registry/decision.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dgmeta.errors import TrackingError
from dgmeta.tracking import model_registry as registry
from dgmeta.tracking.model_registry import CHALLENGER, CHAMPION, Evaluation
from dgmeta.tracking.stats import paired_t_test

PROMOTED, REJECTED, SKIPPED = "promoted", "rejected", "skipped"


@dataclass
class Decision:
    outcome: str  # promoted | rejected | skipped
    reason: str
    model_name: str
    margin: float
    version: str | None = None
    champion_version: str | None = None
    challenger_acc: float | None = None  # percent, over the compared (target, seed) pairs
    champion_acc: float | None = None
    delta_pp: float | None = None
    p_value: float | None = None
    n_pairs: int = 0
    report: str = ""

    @property
    def promoted(self) -> bool:
        return self.outcome == PROMOTED

    def one_line(self) -> str:
        line = f"{self.outcome}: {self.reason}"
        if self.version:
            line += f" ({self.model_name} v{self.version})"
        return line

    def tags(self) -> dict[str, str]:
        tags = {"decision": self.outcome, "decision_reason": self.reason, "margin_pp": f"{self.margin:g}"}
        if self.delta_pp is not None:
            tags["delta_pp"] = f"{self.delta_pp:.4f}"
        if self.champion_version:
            tags["compared_with"] = f"v{self.champion_version}"
        return tags


def decide(challenger: Evaluation, champion: Evaluation | None, margin: float, model_name: str, champion_version: str | None = None) -> Decision:
    base = dict(model_name=model_name, margin=margin, champion_version=champion_version)
    if not challenger.scores:
        return Decision(REJECTED, "the challenger has no finished run with test_acc", **base)
    if champion is None:
        return Decision(PROMOTED, "no champion yet", challenger_acc=100 * challenger.mean_test_acc, **base)
    for key in ("dataset", "protocol"):
        mine, theirs = challenger.tag(key), champion.tag(key)
        if mine and theirs and mine != theirs:
            return Decision(REJECTED, f"{key} {mine} differs from the champion's {theirs}: not comparable", **base)
    common = sorted(set(challenger.scores) & set(champion.scores))
    if common:
        mine = [100 * challenger.scores[k] for k in common]
        theirs = [100 * champion.scores[k] for k in common]
        _, p = paired_t_test(mine, theirs)
        p_value = None if math.isnan(p) else p
    elif champion.runs:
        return Decision(REJECTED, "no (target, seed) in common with the champion: not comparable", **base)
    else:  # the champion's runs are gone (deleted): fall back to its recorded mean, unpaired
        mine, theirs, p_value = [100 * challenger.mean_test_acc], [100 * champion.recorded_test_acc], None
    challenger_acc, champion_acc = sum(mine) / len(mine), sum(theirs) / len(theirs)
    delta = challenger_acc - champion_acc
    numbers = dict(challenger_acc=challenger_acc, champion_acc=champion_acc, delta_pp=delta, p_value=p_value, n_pairs=len(common))
    if delta > margin:
        return Decision(PROMOTED, f"beats v{champion_version} by {delta:+.2f} pp (> margin {margin:g} pp)", **numbers, **base)
    return Decision(REJECTED, f"{delta:+.2f} pp against v{champion_version} is not more than the margin {margin:g} pp", **numbers, **base)


def register_with_decision(evaluation: Evaluation, model_name: str, margin: float, client=None) -> Decision:
    """Register ``evaluation`` as a new version, decide against the champion, move the aliases."""
    client = client or registry.client_for()
    champion_version = registry.version_by_alias(model_name, CHAMPION, client)
    champion = None
    if champion_version is not None:
        champion = _champion_evaluation(champion_version, client)
    decision = decide(evaluation, champion, margin, model_name, champion_version.version if champion_version else None)
    version = registry.register_evaluation(evaluation, model_name, extra_tags=decision.tags(), client=client)
    decision.version = str(version.version)
    if decision.promoted:
        registry.move_alias(model_name, CHAMPION, version.version, client)
        registry.drop_alias(model_name, CHALLENGER, client)
    else:
        registry.move_alias(model_name, CHALLENGER, version.version, client)
    decision.report = decision_report(decision, evaluation, champion)
    report_run = evaluation.parent_run_id or evaluation.representative().run_id
    client.log_text(report_run, decision.report, "registry/decision.md")
    return decision


def _champion_evaluation(version, client) -> Evaluation:
    try:
        evaluation = registry.version_evaluation(version, client)
    except Exception:  # its runs were deleted from the store: keep the recorded mean only
        evaluation = Evaluation([], config_hash=version.tags.get("config_hash", ""))
    try:
        evaluation.recorded_test_acc = float(version.tags.get("test_acc", "nan"))
    except ValueError:
        raise TrackingError(f"champion v{version.version} has a malformed test_acc tag", "re-register it or move the champion alias") from None
    return evaluation


def decision_report(decision: Decision, challenger: Evaluation, champion: Evaluation | None) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.2f}"

    lines = [
        f"# {decision.model_name}: challenger {decision.outcome}",
        "",
        f"**Decision:** {decision.outcome} — {decision.reason}",
        "",
        "| | version | mean test acc (%) | runs |",
        "|---|---|---|---|",
        f"| challenger | v{decision.version or '?'} | {pct(decision.challenger_acc)} | {len(challenger.scores)} |",
    ]
    if champion is not None:
        lines.append(f"| champion | v{decision.champion_version} | {pct(decision.champion_acc)} | {len(champion.scores)} |")
    lines += [
        "",
        f"- margin: more than {decision.margin:g} percentage points of mean test accuracy",
        f"- compared (target, seed) pairs: {decision.n_pairs}",
        f"- delta: {'-' if decision.delta_pp is None else f'{decision.delta_pp:+.2f} pp'}"
        + ("" if decision.p_value is None else f" (paired t-test p = {decision.p_value:.3g})"),
        f"- challenger config hash: {challenger.config_hash or '-'}, data fingerprint: {challenger.tag('data_fingerprint') or '-'}",
    ]
    if champion is not None:
        lines.append(f"- champion config hash: {champion.config_hash or '-'}, data fingerprint: {champion.tag('data_fingerprint') or '-'}")
    return "\n".join(lines) + "\n"
