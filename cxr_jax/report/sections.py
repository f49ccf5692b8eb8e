"""Report sections shared by the studies: (heading, HTML body) pairs, or collapsed
(heading, body, options) triples, for `write_index` (see `cxr_jax.report.html`).

A study composes its page from these, so the same result reads the same in every report:
`lead` opens it with pictures (overlays, the pointing-game heatmap and interval plot), the
long tables of `evaluation(..., collapse_tables=True)` follow folded.
Figure paths are relative to the page; `prefix` says where a sub-study's figures sit relative
to the page that shows them (e.g. "explain/" in the quickstart's report).
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np

from cxr_jax.report import figures, tables
from cxr_jax.report.html import Section, caption, collapsed, image


def pointing_game(summary: Mapping) -> tuple[str, str]:
    """The class-mean and pooled pointing game of every method, best first."""
    pg = summary["pointing_game"]
    ci = summary.get("pointing_game_ci", {})
    rows = [{"method": m, "pointing game (class mean)": v,
             **({"95% interval": "[{:.3f}, {:.3f}]".format(*ci[m])} if m in ci else {}),
             "pooled": summary["pointing_game_pooled"][m]}
            for m, v in sorted(pg.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1))]
    return ("Pointing game (centre = always point at the image centre)", tables.html(rows))


def metric_tables(summary: Mapping, findings: Sequence[str], metrics: Sequence[str]
                  ) -> list[tuple[str, str]]:
    """One methods x findings table per metric."""
    out = []
    for metric in metrics:
        rows = tables.metric_rows(summary["table"], findings, metric)
        if rows:
            out.append((f"{metric} per method x finding", tables.html(rows)))
    return out


def agreement(summary: Mapping, workdir: str, prefix: str = "") -> list[tuple[str, str]]:
    """The box-IoU agreement matrix between methods (ground truth last), as a figure written
    to `workdir/agreement.png`; no section when there is nothing to compare."""
    ag = summary["agreement"]
    if not ag["names"]:
        return []
    figures.save_matrix(np.array(ag["matrix"], float), ag["names"],
                        os.path.join(workdir, "agreement.png"),
                        title="Box IoU between methods (multi-Otsu boxes)")
    return [("Agreement between methods (box IoU; ground truth last)",
             image(prefix + "agreement.png"))]


def evaluation(summary: Mapping, findings: Sequence[str], metrics: Sequence[str],
               workdir: str, prefix: str = "", *, collapse_tables: bool = False
               ) -> list[Section]:
    """Pointing game with the centre baseline, a table per metric and the agreement matrix;
    `collapse_tables` folds the tables (`html.collapsed`), not the matrix."""
    tabs = [pointing_game(summary)] + metric_tables(summary, findings, metrics)
    if collapse_tables:
        tabs = [collapsed(*t) for t in tabs]
    return tabs + agreement(summary, workdir, prefix)


def counts_text(counts: Mapping[str, int]) -> str:
    """Images per finding as text, e.g. "nodule 24, mass 24, consolidation 23 (71 in all)"
    (an image positive for two findings counts in both); "no images" when empty."""
    if not counts:
        return "no images"
    return (", ".join(f"{k} {v}" for k, v in counts.items())
            + f" ({sum(counts.values())} in all)")


def precision_note(counts: Mapping[str, int]) -> str:
    """How far chance moves a pointing-game cell, from the median images per finding n: one
    image moves it by 1/n, and at a hit rate of 0.8 its binomial standard error is
    sqrt(0.16 / n) (1.96 of these either side for 95%). Empty when there are no images."""
    n = float(np.median(list(counts.values()))) if counts else 0.0
    if n <= 0:
        return ""
    se = math.sqrt(0.8 * 0.2 / n)
    return (f"How precise a cell is: with {n:g} images per finding (the median), one image "
            f"moves a cell of the heatmap by 1/{n:g} = {1 / n:.2f}, and at a hit rate of 0.8 "
            f"a cell's binomial standard error is sqrt(0.8 x 0.2 / {n:g}) = {se:.2f}, so its "
            f"95% interval is about ±{1.96 * se:.2f}: differences between cells of that size "
            "can be chance. A method's class mean pools the findings, so its interval (the "
            "lines in this plot) is narrower.")


def lead(summary: Mapping, findings: Sequence[str], workdir: str, prefix: str = "", *,
         overlays: str = "overlays.png", per_cell_note: bool = True) -> list[Section]:
    """The sections a report opens with, in this order: the overlay figure `prefix +
    overlays` (written by the caller, e.g. `evaluation.study.gallery`) with
    `figures.OVERLAY_CAPTION`; the pointing game per method x finding as a heatmap (rows
    best class mean first, the centre baseline among them); each method's class mean with
    its 95% bootstrap interval as a dot plot, with `precision_note` when `per_cell_note`.

    Writes `pointing_game_heatmap.png` and `pointing_game_intervals.png` into `workdir` from
    summary["table"], ["pointing_game"], ["pointing_game_ci"] and ["counts"] (as returned by
    `evaluation.evaluate`); without pointing-game rows only the overlays section is returned.
    """
    out = [("Maps on held-out positives", image(prefix + overlays)
            + caption(figures.OVERLAY_CAPTION))]
    rows = sorted(tables.metric_rows(summary["table"], findings, "pointing_game"),
                  key=lambda r: -np.nan_to_num(r["mean"], nan=-1))
    if not rows:
        return out
    counts = summary.get("counts", {})
    figures.save_heatmap([[r[f] for f in findings] + [r["mean"]] for r in rows],
                         [r["method"] for r in rows],
                         [f"{f}\n(n={counts[f]})" if f in counts else f for f in findings]
                         + ["class mean"], os.path.join(workdir, "pointing_game_heatmap.png"),
                         title="Pointing game (hit rate)")
    figures.save_intervals(summary["pointing_game"], summary.get("pointing_game_ci", {}),
                           os.path.join(workdir, "pointing_game_intervals.png"))
    note = precision_note(counts) if per_cell_note else ""
    return out + [
        ("Pointing game per method and finding",
         image(prefix + "pointing_game_heatmap.png")
         + caption("Share of each finding's held-out positives on which the method's maximum "
                   "falls on the finding (within the tolerance); rows best class mean first; "
                   "centre: always point at the image centre; grey: n/a.")),
        ("Pointing game: class mean and 95% bootstrap interval",
         image(prefix + "pointing_game_intervals.png")
         + caption("Dots: each method's class mean (mean over findings of the hit rate); "
                   "lines: its 95% stratified bootstrap interval; dashed: the centre "
                   "baseline. " + note))]


def noise_check(noise: Mapping[str, Mapping[str, float]], regression: bool) -> tuple[str, str]:
    """The IBA noise check: each finding's score when a bottleneck passes only noise."""
    rows = [{"layer": layer, **per} for layer, per in noise.items()]
    if regression:
        return ("IBA noise check",
                "<p>The regressor's output when the bottleneck at each layer passes only noise. "
                "Regression IBA keeps the image's own output, so it is well posed as long as "
                "this differs from it.</p>" + tables.html(rows))
    high = [f"{f} at {layer} ({v:.2f})" for layer, per in noise.items()
            for f, v in per.items() if v >= 0.5]
    verdict = ("Every finding's score drops below 0.5 on noise alone, as IBA presumes."
               if not high else "On noise alone the model already scores " + ", ".join(high)
               + ". For these IBA's premise fails at that layer: a closed bottleneck keeps "
                 "much of the score, so the map may be flat or off the finding, and Multi-layer "
                 "IBA inherits this through that layer. Read those maps with care.")
    return ("IBA noise check",
            f"<p>Mean score of each finding when the bottleneck at a layer passes only noise "
            f"(N(mu, sigma^2) of the layer's features). {verdict}</p>" + tables.html(rows))


def figure(heading: str, src: str) -> tuple[str, str]:
    """A section showing one figure."""
    return (heading, image(src))
