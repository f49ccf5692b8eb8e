"""Per-image rows -> the tables a report shows: means per method and finding, the class-mean
and pooled pointing game, and the agreement matrix between methods."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cxr_jax import metrics
from cxr_jax.report.tables import nanmean

METRICS = ("pointing_game", "box_iou", "box_recall", "ehr", "insertion", "deletion",
           "sensitivity_n")


def with_derived(rows: Sequence[dict]) -> list[dict]:
    """Rows with the metrics derived from what every row stores added to each method's entry,
    so rows written before such a metric existed get it too (copies; rows without a
    ground-truth box are returned as they are): box_recall = |box n gt box| / |gt box|
    (`metrics.box_recall`), NaN where the map was NaN."""
    out = []
    for r in rows:
        gt = r.get("gt_box")
        if gt is None:
            out.append(r)
            continue
        gt = _as_boxes([gt])[0]
        r = dict(r)
        for m, v in r.items():
            if isinstance(v, dict) and "box" in v:
                recall = (np.nan if v.get("nan_map") else
                          float(metrics.box_recall(_as_boxes([v["box"]])[0], gt)))
                r[m] = {**v, "box_recall": recall}
        out.append(r)
    return out


def _as_boxes(values) -> np.ndarray:
    return np.array([[np.nan if c is None else c for c in v] for v in values],
                    float).reshape(-1, 4)


def _agreement(rows: Sequence[dict], methods: Sequence[str]) -> dict:
    """Box IoU between every pair of methods (ground truth as the last row) over the rows that
    every method scored."""
    with_boxes = [m for m in methods if m != "centre"]
    complete = [r for r in rows if all(m in r for m in with_boxes)]
    names, matrix = [], np.zeros((0, 0))
    if complete and with_boxes:
        boxes = {m: _as_boxes([r[m]["box"] for r in complete]) for m in with_boxes}
        gt = _as_boxes([r["gt_box"] for r in complete])
        names, matrix = metrics.agreement_matrix(boxes, gt if np.isfinite(gt).any() else None)
    return {"names": list(names), "matrix": np.asarray(matrix).tolist()}


def summarise(rows: Sequence[dict], finding_names: Sequence[str], methods: Sequence[str]
              ) -> dict:
    """Aggregates per-image rows.

    Returns:
      {"pointing_game": {method: class-mean hit rate (mean over findings of the per-finding
         rate, TorchRay's accuracy; `metrics.pointing_game_summary`)},
       "pointing_game_pooled": {method: pooled rate},
       "pointing_game_ci": {method: [low, high]} (95% stratified bootstrap interval of the
         class mean, `metrics.pointing_game_interval`),
       "table": {method: {finding: {metric: mean}}}, "counts": {finding: images},
       "agreement": {"names": [...], "matrix": [[...]]}} (box IoU between methods, ground truth
       as the last row).
    """
    rows = with_derived(rows)
    table: dict[str, dict[str, dict[str, float]]] = {}
    pg_class, pg_pooled, pg_ci = {}, {}, {}
    counts = {f: sum(r["finding"] == f for r in rows) for f in finding_names}
    for m in methods:
        table[m] = {}
        hits = {}
        for f in finding_names:
            sub = [r[m] for r in rows if r["finding"] == f and m in r]
            table[m][f] = {metric: nanmean([s.get(metric) for s in sub]) for metric in METRICS
                           if any(metric in s for s in sub)}
            if sub:
                hits[f] = [np.nan if s.get("pointing_game") is None else s["pointing_game"]
                           for s in sub]
        pg = metrics.pointing_game_summary(hits)
        pg_class[m], pg_pooled[m] = pg.accuracy, pg.pooled
        pg_ci[m] = list(metrics.pointing_game_interval(hits)) if hits else [np.nan, np.nan]
    return {"pointing_game": pg_class, "pointing_game_pooled": pg_pooled,
            "pointing_game_ci": pg_ci, "table": table, "counts": counts,
            "agreement": _agreement(rows, methods)}


def intervals(rows: Sequence[dict], findings: Sequence[str], methods: Sequence[str]
              ) -> dict[str, dict[str, list[float]]]:
    """95% stratified bootstrap intervals of each method's class mean over `findings` of every
    metric in METRICS (`metrics.class_mean_interval`; unscored images are skipped).

    Returns:
      {method: {metric: [low, high]}} for the metrics the rows hold.
    """
    rows = with_derived(rows)
    out: dict[str, dict[str, list[float]]] = {}
    for m in methods:
        out[m] = {}
        for metric in METRICS:
            per_finding = {f: [np.nan if r[m][metric] is None else float(r[m][metric])
                               for r in rows if r["finding"] == f and metric in r.get(m, {})]
                           for f in findings}
            if any(per_finding.values()):
                out[m][metric] = list(metrics.class_mean_interval(per_finding))
    return out
