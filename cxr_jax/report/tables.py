"""Tables of dict rows as Markdown, CSV and HTML, with one number format.

Floats show 3 decimals; NaN and None show as "n/a" (an empty cell in CSV); anything else as
its text. Every study's tables go through here, so they read the same everywhere.
"""

from __future__ import annotations

import html as html_lib
import math
import os
from typing import Mapping, Sequence

import numpy as np

from cxr_jax.common.files import write_text


def _missing(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(v))


def cell(v, *, missing: str = "n/a") -> str:
    """One value as text: floats to 3 decimals, NaN/None as `missing`."""
    if _missing(v):
        return missing
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}"
    return str(v)


def _columns(rows: Sequence[Mapping], columns: Sequence[str] | None) -> list[str]:
    """The caller's columns, or every key the rows hold, in order of first appearance."""
    return list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))


def markdown(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of dict rows (`columns` default to every key of the rows, in order)."""
    cols = _columns(rows, columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """A CSV table of dict rows (missing numbers as empty cells)."""
    cols = _columns(rows, columns)
    lines = [",".join(cols)]
    lines += [",".join(cell(r.get(c, ""), missing="") for c in cols) for r in rows]
    return "\n".join(lines) + "\n"


def html(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """An HTML table of dict rows (text escaped)."""
    if not rows:
        return "<p>(no rows)</p>"
    cols = _columns(rows, columns)
    head = "".join(f"<th>{html_lib.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html_lib.escape(cell(r.get(c, '')))}</td>"
                                    for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write(path_stem: str, rows: Sequence[Mapping], columns: Sequence[str] | None = None, *,
          title: str | None = None) -> list[str]:
    """Writes `path_stem.md` (with `title` above the table) and `path_stem.csv`, atomically."""
    md = markdown(rows, columns)
    paths = [f"{path_stem}.md", f"{path_stem}.csv"]
    write_text(paths[0], f"{title}\n\n{md}" if title else md)
    write_text(paths[1], csv(rows, columns))
    return paths


def nanmean(values) -> float:
    """Mean of the finite values (None counts as missing); NaN when there are none."""
    a = np.array([np.nan if v is None else v for v in values], float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def metric_rows(table: Mapping[str, Mapping[str, Mapping[str, float]]],
                findings: Sequence[str], metric: str) -> list[dict]:
    """Rows {"method", finding..., "mean"} of one metric from a {method: {finding: {metric:
    value}}} table; methods without that metric are left out."""
    rows = []
    for method, per in table.items():
        if not any(metric in per.get(f, {}) for f in findings):
            continue
        vals = {f: per.get(f, {}).get(metric, float("nan")) for f in findings}
        rows.append({"method": method, **vals, "mean": nanmean(list(vals.values()))})
    return rows


def write_metric_tables(workdir: str, table: Mapping, findings: Sequence[str],
                        metrics: Sequence[str]) -> list[str]:
    """`table_<metric>.md` and `.csv` in `workdir` for each metric (methods x findings, plus
    the mean); returns the paths written."""
    paths = []
    for metric in metrics:
        rows = metric_rows(table, findings, metric)
        if rows:
            paths += write(os.path.join(workdir, f"table_{metric}"), rows,
                           ["method", *findings, "mean"])
    return paths
