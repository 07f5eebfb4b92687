"""Results as HTML tables in the book: numbers rounded, headers that wrap, a caption naming the model and data."""
from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

import numpy as np

from aen_mini.book.style import SWEEP_LABELS

__all__ = ["html_table", "sweep_table"]

_CELL_PADDING = "padding: 0.15em 0.35em"
# Headers wrap and the table is set a little smaller, so a results table of a dozen columns fits the 752 px column.
_TABLE_STYLE = "font-size: 0.75em"
_HEADER_STYLE = f"{_CELL_PADDING}; white-space: normal; vertical-align: bottom"


def html_table(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]], columns: Sequence[str] | Mapping[str, str],
               *, digits: int = 3, formats: Mapping[str, str] | None = None, caption: str | None = None) -> Any:
    """Rows as an HTML table (IPython.display.HTML), numbers rounded.

    `rows` are mappings (read at the keys of `columns`) or sequences (in the order of `columns`); `columns`
    is a list of keys, or {key: header}. Floats are written with `digits` significant digits unless
    `formats` gives a format for their column (e.g. {"dead_pct": "{:.1f}"}); NaN is written as "n/a".
    `caption` (say which model and data produced the numbers) is shown above the table.
    """
    from IPython.display import HTML  # ipywidgets (a dependency) brings IPython

    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    keys, formats = list(headers), dict(formats or {})
    unknown = sorted(set(formats) - set(keys))
    if unknown:
        raise ValueError(f"formats for columns {unknown} that the table does not have ({keys})")

    def cell(key: str, value: Any) -> str:
        if isinstance(value, float) and math.isnan(value):
            text, numeric = "n/a", True
        elif isinstance(value, (bool, str)) or value is None:
            text, numeric = "" if value is None else str(value), False
        elif isinstance(value, (int, float, np.integer, np.floating)):
            text = formats[key].format(value) if key in formats else \
                str(value) if isinstance(value, (int, np.integer)) else f"{value:.{digits}g}"
            numeric = True
        else:
            text, numeric = str(value), False
        align = "text-align: right; " if numeric else ""
        return f'<td style="{align}{_CELL_PADDING}">{html.escape(text)}</td>'

    body = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            missing = [k for k in keys if k not in row]
            if missing:
                raise ValueError(f"row {i} has no {missing}; it has {sorted(row)}")
            values = [row[k] for k in keys]
        else:
            values = list(row)
            if len(values) != len(keys):
                raise ValueError(f"row {i} has {len(values)} values for {len(keys)} columns")
        body.append("<tr>" + "".join(cell(k, v) for k, v in zip(keys, values)) + "</tr>")
    head = "".join(f'<th style="{_HEADER_STYLE}">{html.escape(str(headers[k]))}</th>' for k in keys)
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return HTML(f'<table class="dataframe aen-table" style="{_TABLE_STYLE}">{title}<thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table>")


def sweep_table(summary: Sequence[Mapping[str, Any]], metrics: Sequence[str], *, caption: str,
                digits: int = 3) -> Any:
    """An HTML table of ``aen_mini.experiments.sweep_report.summarise`` rows (the book's replacement for printing
    ``sweep.markdown_table``): method, rho, seeds, l1, then "mean ± std" over seeds for each metric."""
    missing = [f"{m}_mean" for m in metrics if summary and f"{m}_mean" not in summary[0]]
    if missing:
        raise ValueError(f"summary rows have no {missing}; summarise the records with these metrics")
    rows = [[r["label"], r["rho"], r.get("n_seeds", 1), "k" if r.get("l1_coeff") is None else f"{r['l1_coeff']:.3g}",
             *(f"{r[f'{m}_mean']:.{digits}g} ± {r[f'{m}_std']:.2g}" for m in metrics)] for r in summary]
    headers = ["method", "ρ", "seeds", "l1", *(SWEEP_LABELS.get(m, m) for m in metrics)]
    return html_table(rows, headers, caption=caption)
