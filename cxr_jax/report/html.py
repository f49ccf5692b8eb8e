"""A small static HTML report: headings, tables and PNG figures beside `index.html`."""

from __future__ import annotations

import html
import os
from typing import Sequence

from cxr_jax.common.files import write_text

_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
          "padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}")


def page(title: str, sections: Sequence[tuple[str, str]], *, style: str = "",
         top: str = "", bottom: str = "") -> str:
    """A whole HTML page: the title, `top`, (heading, html body) sections, `bottom`."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}{style}</style></head><body><h1>{html.escape(title)}</h1>",
             top]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{body}")
    parts += [bottom, "</body></html>"]
    return "\n".join(p for p in parts if p)


def write_index(workdir: str, title: str, sections: Sequence[tuple[str, str]]) -> str:
    """Writes `workdir/index.html` from (heading, html body) sections; returns its path.

    Figures are referenced by relative path (`<img src="curves.png">`), so the folder can be
    copied or served as it is.
    """
    path = os.path.join(workdir, "index.html")
    write_text(path, page(title, sections))
    return path


def image(src: str) -> str:
    """An <img> of a figure at relative path `src`."""
    return f'<img src="{html.escape(src)}">'
