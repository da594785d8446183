"""The comparison as one self-contained HTML file: tables plus a grouped bar chart (PNG inlined as base64)."""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dgmeta.tracking.compare import AVERAGE, LODO_CAVEAT, Comparison
from dgmeta.tracking.compare_report import EXCLUDED_COLUMNS, excluded_lines, row_cells, selection_line, table_columns

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.key { text-align: left; }
tr.avg td { font-weight: bold; background: #fafafa; }
.note { color: #8a5a00; }
"""


def bar_chart_png(comparison: Comparison) -> bytes:
    """Mean test accuracy per target (and avg), one bar per group, error bars = 95% CI."""
    groups = comparison.groups()
    targets = comparison.targets()
    fig = Figure(figsize=(max(6.0, 1.1 * len(targets) * max(1, len(groups)) ** 0.5 + 2), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(targets))
    for index, group in enumerate(groups):
        means, errors = [], []
        for target in targets:
            row = comparison.row(group, target)
            means.append(row.summary.mean if row else math.nan)
            errors.append(row.summary.ci95 if row and not math.isnan(row.summary.ci95) else 0.0)
        ax.bar(x + (index - (len(groups) - 1) / 2) * width, means, width, yerr=errors, capsize=3, label=" / ".join(group))
    ax.set_xticks(x, targets)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("mean over seeds, error bars: 95% CI")
    ax.grid(axis="y", alpha=0.3)
    if groups:
        ax.legend(fontsize=8, title=" / ".join(comparison.group_by), title_fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _table(header: list[str], rows: list[list[str]], key_columns: int, row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for index, row in enumerate(rows):
        css = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        cells = "".join(
            f'<td{" class=key" if i < key_columns else ""}>{html.escape(cell)}</td>' for i, cell in enumerate(row)
        )
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(comparison: Comparison, title: str = "dgmeta comparison") -> str:
    parts = [
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>',
        f"<h1>{html.escape(title)}</h1>",
        "<p>Test accuracy (%) of the checkpoint selected by training-domain validation: mean over seeds.</p>",
        f"<p>{html.escape(selection_line(comparison))}</p>",
    ]
    if comparison.selection == "leave-one-domain-out" and comparison.swept:
        parts.append(f'<p class="note">{html.escape(LODO_CAVEAT)}</p>')
    if comparison.rows:
        chart = base64.b64encode(bar_chart_png(comparison)).decode()
        parts.append(f'<img alt="accuracy per target domain" src="data:image/png;base64,{chart}">')
        classes = ["avg" if row.target == AVERAGE else "" for row in comparison.rows]
        parts.append(_table(table_columns(comparison), [row_cells(comparison, r) for r in comparison.rows], len(comparison.group_by) + 1, classes))
    else:
        parts.append("<p>No finished runs with test_acc.</p>")
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in comparison.notes]
    if comparison.excluded:
        parts.append("<h2>Runs not averaged</h2>")
        parts.append(_table(EXCLUDED_COLUMNS, excluded_lines(comparison), len(EXCLUDED_COLUMNS)))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
