"""A small static HTML report: headings, tables and PNG figures beside `index.html`.

A section is a (heading, html body) pair, or a (heading, html body, options) triple whose
options mapping may set "collapsed": True, drawing the section folded inside
`<details><summary>heading</summary>body</details>` (the reader clicks the heading to open
it). `collapsed(heading, body)` builds such a triple.
"""

from __future__ import annotations

import html
import os
from typing import Mapping, Sequence, Union

from cxr_jax.common.files import write_text

Section = Union[tuple[str, str], tuple[str, str, Mapping]]

_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
          "padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}"
          "summary{cursor:pointer}summary h2{display:inline}"
          "p.caption{font-size:.9em;color:#444;max-width:60em}")


def collapsed(heading: str, body: str) -> Section:
    """A section drawn folded: only its heading shows until the reader opens it."""
    return (heading, body, {"collapsed": True})


def _section(section: Section) -> str:
    heading, body, *rest = section
    h2 = f"<h2>{html.escape(heading)}</h2>"
    if rest and rest[0].get("collapsed"):
        return f"<details><summary>{h2}</summary>\n{body}</details>"
    return f"{h2}\n{body}"


def page(title: str, sections: Sequence[Section], *, style: str = "",
         top: str = "", bottom: str = "") -> str:
    """A whole HTML page: the title, `top`, the sections (see the module doc), `bottom`."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}{style}</style></head><body><h1>{html.escape(title)}</h1>",
             top]
    parts += [_section(s) for s in sections]
    parts += [bottom, "</body></html>"]
    return "\n".join(p for p in parts if p)


def write_index(workdir: str, title: str, sections: Sequence[Section]) -> str:
    """Writes `workdir/index.html` from sections (see the module doc); returns its path.

    Figures are referenced by relative path (`<img src="curves.png">`), so the folder can be
    copied or served as it is.
    """
    path = os.path.join(workdir, "index.html")
    write_text(path, page(title, sections))
    return path


def image(src: str) -> str:
    """An <img> of a figure at relative path `src`."""
    return f'<img src="{html.escape(src)}">'


def caption(text: str) -> str:
    """A figure's caption paragraph (text escaped)."""
    return f'<p class="caption">{html.escape(text)}</p>'
