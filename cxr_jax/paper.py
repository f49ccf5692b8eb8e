"""The published comparisons as runnable studies (experiments/paper.py).

A comparison config names models, a training set-up, methods (with their layers and variants),
and the metric layout of the paper's table. `run` trains every model (resumable), evaluates it
with `cxr_jax.evaluation`, and writes the table in the paper's layout as Markdown and CSV beside
the figures and an index.html.
"""

from __future__ import annotations

import math
import os

import numpy as np

from cxr_jax import evaluation, training
from cxr_jax.common.files import read_json, write_json
from cxr_jax.report import sections, tables, write_index

REGRESSION_DATASETS = ("phantoms_severity", "brixia")
LAYOUTS = {
    # (a) foreign objects: one column, the pointing game of each method.
    "pointing_game": ("pointing_game",),
    # (b) methods x architectures x findings: multi-Otsu box IoU (and the agreement matrix).
    "box_iou": ("box_iou",),
    # (c) IBA family against baselines: EHR, insertion, deletion, sensitivity-N.
    "faithfulness": ("ehr", "insertion", "deletion", "sensitivity_n"),
}


def _train(workdir: str, config) -> None:
    """Trains one model of the comparison, unless a finished run of this budget is there."""
    done = read_json(os.path.join(workdir, "results.json"), {})
    if done.get("steps") != config.steps:
        training.train_and_evaluate(config, workdir)


def _finite_mean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _rows(tag: str, res: dict, c) -> list[dict]:
    """This model's rows of the paper's table, in the config's layout."""
    findings = list(c.findings) if c.findings else list(res["counts"])
    rows = []
    for method, per in res["table"].items():
        if method == "centre" and c.layout != "pointing_game":
            continue
        row = {"model": tag, "method": method}
        if c.layout == "pointing_game":
            if c.findings:
                row.update({f: per.get(f, {}).get("pointing_game", float("nan"))
                            for f in findings})
            else:
                row["pointing game"] = res["pointing_game"].get(method, float("nan"))
        elif c.layout == "box_iou":
            vals = {f: per.get(f, {}).get("box_iou", float("nan")) for f in findings}
            row.update(vals, mean=_finite_mean(vals.values()))
        else:
            for m in LAYOUTS[c.layout]:
                row[m] = _finite_mean([per.get(f, {}).get(m, float("nan")) for f in findings])
        rows.append(row)
    return rows


def run(workdir: str, c) -> dict:
    """Trains and evaluates every model of comparison `c`; writes table.md/.csv and index.html.

    Returns:
      {model: the evaluation results of that model}.
    """
    os.makedirs(workdir, exist_ok=True)
    results, page, rows = {}, [], []
    for entry in c.models:
        # "model" or "model@dataset" (e.g. a severity regressor beside a classifier).
        model_name, _, dataset = entry.partition("@")
        tcfg = c.train.copy_and_resolve_references()
        with tcfg.unlocked():
            tcfg.model = model_name
            tcfg.dataset = dataset or tcfg.dataset
        tag = entry.replace("@", "_")
        tdir = os.path.join(workdir, tag, "train")
        edir = os.path.join(workdir, tag, "eval")
        methods = evaluation.for_task(c.methods.to_dict(),
                                      regression=tcfg.dataset in REGRESSION_DATASETS)
        _train(tdir, tcfg)
        res = evaluation.evaluate_checkpoint(edir, tdir, c.eval, methods=methods)
        results[tag] = res
        rows += _rows(tag, res, c)
        if os.path.exists(os.path.join(edir, "agreement.png")):
            page.append(sections.figure(f"{tag}: agreement between methods (box IoU)",
                                        os.path.join(tag, "eval", "agreement.png")))
        page.append(sections.figure(f"{tag}: overlays",
                                    os.path.join(tag, "eval", "overlays.png")))
    columns = list(rows[0].keys()) if rows else []
    tables.write(os.path.join(workdir, "table"), rows, columns, title=c.title)
    write_json(os.path.join(workdir, "results.json"),
               {"title": c.title, "rows": rows,
                "pointing_game": {m: r["pointing_game"] for m, r in results.items()}})
    write_index(workdir, c.title, [("Table (as in the paper)", tables.html(rows, columns)),
                                   ("Note", f"<p>{c.note}</p>")] + page)
    return results
