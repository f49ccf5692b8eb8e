"""The published comparisons as runnable experiments (experiments/paper.py).

A comparison config names models, a training set-up, methods (with their layers and variants),
and the metric layout of the paper's table. `run` trains every model (resumable), evaluates it
with `cxr_jax.evaluation`, and writes the table in the paper's layout as Markdown and CSV beside
the figures and an index.html.
"""

from __future__ import annotations

import math
import os

import numpy as np

from cxr_jax import evaluation, runtime, training
from cxr_jax.data import datasets
from cxr_jax.report import table_html, write_index

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
    if os.path.exists(os.path.join(workdir, "results.json")):
        done = runtime.read_json(os.path.join(workdir, "results.json"))
        if done.get("steps") == config.steps:
            return
    data = datasets.build(config)
    with config.unlocked():
        config.loss = config.loss or data.loss
    training.train(config, workdir, data.train, data.eval, data.label_names)


def _fmt(v: float) -> str:
    return f"{v:.3f}" if isinstance(v, float) and math.isfinite(v) else "n/a"


def run(workdir: str, c) -> dict:
    """Trains and evaluates every model of comparison `c`; writes table.md/.csv and index.html.

    Returns:
      {model: {method: {finding: {metric: value}}}} plus the pointing-game summaries.
    """
    os.makedirs(workdir, exist_ok=True)
    metrics_shown = LAYOUTS[c.layout]
    results, sections = {}, []
    rows = []
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
        methods = {k: v for k, v in c.methods.to_dict().items()
                   if (v["method"] == "regression_iba") == (tcfg.dataset in REGRESSION_DATASETS)
                   or v["method"] not in evaluation.IBA_METHODS}
        _train(tdir, tcfg)
        res = evaluation.evaluate_checkpoint(edir, tdir, c.eval, methods=methods)
        results[tag] = res
        model_name = tag
        findings = list(c.findings) if c.findings else list(res["counts"])
        for method, per in res["table"].items():
            if method == "centre" and c.layout != "pointing_game":
                continue
            if c.layout == "pointing_game":
                vals = [res["pointing_game"].get(method, float("nan"))]
                if c.findings:
                    vals = [per.get(f, {}).get("pointing_game", float("nan")) for f in findings]
                rows.append({"model": model_name, "method": method,
                             **{(f if c.findings else "pointing game"): v
                                for f, v in zip(findings if c.findings else ["all"], vals)}})
            elif c.layout == "box_iou":
                vals = {f: per.get(f, {}).get("box_iou", float("nan")) for f in findings}
                finite = [v for v in vals.values() if math.isfinite(v)]
                rows.append({"model": model_name, "method": method, **vals,
                             "mean": float(np.mean(finite)) if finite else float("nan")})
            else:
                row = {"model": model_name, "method": method}
                for m in metrics_shown:
                    v = [per.get(f, {}).get(m, float("nan")) for f in findings]
                    v = [x for x in v if math.isfinite(x)]
                    row[m] = float(np.mean(v)) if v else float("nan")
                rows.append(row)
        if os.path.exists(os.path.join(edir, "agreement.png")):
            rel = os.path.join(tag, "eval", "agreement.png")
            sections.append((f"{model_name}: agreement between methods (box IoU)",
                             f'<img src="{rel}">'))
        sections.append((f"{model_name}: overlays",
                         f'<img src="{os.path.join(tag, "eval", "overlays.png")}">'))
    columns = list(rows[0].keys()) if rows else []
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_fmt(r[k]) if isinstance(r[k], float) else str(r[k])
                             for k in columns) + " |" for r in rows]
    csv = [",".join(columns)] + [",".join(_fmt(r[k]) if isinstance(r[k], float) else str(r[k])
                                          for k in columns) for r in rows]
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(f"{c.title}\n\n" + "\n".join(md) + "\n")
    with open(os.path.join(workdir, "table.csv"), "w") as f:
        f.write("\n".join(csv) + "\n")
    runtime.write_json(os.path.join(workdir, "results.json"),
                       {"title": c.title, "rows": rows,
                        "pointing_game": {m: r["pointing_game"] for m, r in results.items()}})
    write_index(workdir, c.title, [("Table (as in the paper)", table_html(rows, columns)),
                                   ("Note", f"<p>{c.note}</p>")] + sections)
    return results
