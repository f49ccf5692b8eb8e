"""Report sections shared by the studies: (heading, HTML body) pairs for `write_index`.

A study composes its page from these, so the same result reads the same in every report.
Figure paths are relative to the page; `prefix` says where a sub-study's figures sit relative
to the page that shows them (e.g. "explain/" in the quickstart's report).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from cxr_jax.report import figures, tables
from cxr_jax.report.html import image


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
               workdir: str, prefix: str = "") -> list[tuple[str, str]]:
    """Pointing game with the centre baseline, a table per metric and the agreement matrix."""
    return ([pointing_game(summary)] + metric_tables(summary, findings, metrics)
            + agreement(summary, workdir, prefix))


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
