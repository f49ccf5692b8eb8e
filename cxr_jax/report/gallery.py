"""A paged image gallery: `index.html` (summary sections and the first page) and
`page_002.html`, ... with links between them, so that thousands of images stay usable.

Each image is a `Card`: a title, lines of text, and rows of captioned pictures (for the explain
command: one row per explained finding, the input then every method's overlay). Pictures are
referenced by relative path and lazily loaded.
"""

from __future__ import annotations

import html
import os
from typing import NamedTuple, Sequence

from cxr_jax.common.files import write_text
from cxr_jax.report.html import page

_STYLE = (".card{border-top:1px solid #ccc;padding:.6em 0}.card h3{margin:.2em 0;font-size:1em}"
          ".card p{margin:.1em 0;font-size:.85em;color:#555}.row{display:flex;gap:6px;"
          "align-items:flex-start;margin:.3em 0}.row .label{width:9em;font-size:.85em}"
          "figure{margin:0;text-align:center}figcaption{font-size:.75em}"
          ".nav{margin:1em 0}.nav a,.nav b{margin-right:.5em}")


class Card(NamedTuple):
    """One gallery entry: `rows` are (label, [(caption, relative image path)])."""

    title: str
    lines: Sequence[str]
    rows: Sequence[tuple[str, Sequence[tuple[str, str]]]]


def page_name(number: int) -> str:
    """File of page `number` (1-based): index.html, then page_002.html, ..."""
    return "index.html" if number == 1 else f"page_{number:03d}.html"


def _nav(number: int, pages: int) -> str:
    if pages <= 1:
        return ""
    links = []
    if number > 1:
        links.append(f'<a href="{page_name(number - 1)}">&larr; previous</a>')
    for k in range(1, pages + 1):
        links.append(f"<b>{k}</b>" if k == number else f'<a href="{page_name(k)}">{k}</a>')
    if number < pages:
        links.append(f'<a href="{page_name(number + 1)}">next &rarr;</a>')
    return f'<div class="nav">page {number} of {pages}: {" ".join(links)}</div>'


def _card(card: Card, px: int) -> str:
    parts = [f'<div class="card"><h3>{html.escape(card.title)}</h3>']
    parts += [f"<p>{html.escape(line)}</p>" for line in card.lines]
    for label, pictures in card.rows:
        figs = "".join(
            f'<figure><img loading="lazy" width="{px}" height="{px}" '
            f'src="{html.escape(src)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
            for caption, src in pictures)
        parts.append(f'<div class="row"><div class="label">{html.escape(label)}</div>{figs}'
                     f"</div>")
    parts.append("</div>")
    return "".join(parts)


def write_gallery(workdir: str, title: str, sections: Sequence[tuple[str, str]],
                  cards: Sequence[Card], *, page_size: int = 50, px: int = 160) -> list[str]:
    """Writes the gallery pages; returns their paths (index.html first).

    Args:
      workdir: folder of the pages (image paths in the cards are relative to it).
      title: page title.
      sections: (heading, html body) shown on the first page, above the cards.
      cards: the entries, in order; `page_size` per page.
      px: shown width and height of each picture.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be positive, got {page_size}.")
    pages = max(1, -(-len(cards) // page_size))
    paths = []
    for number in range(1, pages + 1):
        chunk = cards[(number - 1) * page_size:number * page_size]
        nav = _nav(number, pages)
        body = nav + "".join(_card(c, px) for c in chunk) + nav
        heading = f"Images {(number - 1) * page_size + 1}-{(number - 1) * page_size + len(chunk)}"
        page_sections = list(sections if number == 1 else []) + [
            (heading if chunk else "Images", body or "<p>No images were explained.</p>")]
        path = os.path.join(workdir, page_name(number))
        write_text(path, page(title if number == 1 else f"{title}: page {number}",
                              page_sections, style=_STYLE))
        paths.append(path)
    return paths
