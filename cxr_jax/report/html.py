"""A small static HTML report: headings, tables and PNG figures beside `index.html`."""

from __future__ import annotations

import html
import math
import os
from typing import Mapping, Sequence


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


def table_html(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """An HTML table of dict rows (floats to 3 decimals, NaN as n/a)."""
    if not rows:
        return "<p>(no rows)</p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_index(workdir: str, title: str, sections: Sequence[tuple[str, str]]) -> str:
    """Writes `workdir/index.html` from (heading, html body) sections; returns its path.

    Figures are referenced by relative path (`<img src="curves.png">`), so the folder can be
    copied or served as it is.
    """
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
             "padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{body}")
    parts.append("</body></html>")
    path = os.path.join(workdir, "index.html")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(parts))
    os.replace(path + ".tmp", path)
    return path
