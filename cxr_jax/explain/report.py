"""The run's summary files, rebuilt from every image's npz: predictions.csv and the gallery.

predictions.csv has one row per explained image: name, path, the explained findings (";"
separated), then each trained output's probability (the raw score for a regressor) and, for a
model with operating points, each output's calibrated score in a column "<finding> (calibrated)".
"""

from __future__ import annotations

import csv
import html
import io
import os
from typing import Any, Mapping, Sequence

import numpy as np

from cxr_jax import report as report_io
from cxr_jax.common.files import write_text
from cxr_jax.explain.inputs import Item
from cxr_jax.explain.outputs import map_path, overlay_file, read
from cxr_jax.models import Metadata

SHOWN_SKIPS = 50


def _predictions(rows: Sequence[tuple[Item, dict]], meta: Metadata) -> str:
    trained = meta.trained
    names = [meta.finding_names[i] for i in trained]
    calibrated = meta.op_threshs is not None and meta.output == "sigmoid"
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["name", "path", "explained", *names,
                *([f"{n} (calibrated)" for n in names] if calibrated else [])])
    for item, r in rows:
        explained = ";".join(meta.finding_names[int(t)] for t in r["targets"])
        values = [f"{float(r['probs'][i]):.6g}" for i in trained]
        if calibrated:
            values += [f"{float(r['scores'][i]):.6g}" for i in trained]
        w.writerow([item.name, r["path"], explained, *values])
    return out.getvalue()


def _card(item: Item, r: dict, meta: Metadata, methods: Sequence[str], overlays: bool
          ) -> report_io.Card:
    order = [i for i in np.argsort(-r["scores"], kind="stable") if meta.finding_names[i]]
    top = ", ".join(f"{meta.finding_names[i]} {float(r['probs'][i]):.2f}" for i in order[:3])
    lines = [r["path"], f"top findings: {top}"]
    rows = []
    for t in r["targets"]:
        finding = meta.finding_names[int(t)]
        pictures = [("input", overlay_file(item.name))] + [
            (m, overlay_file(item.name, m, finding)) for m in methods] if overlays else []
        rows.append((f"{finding} ({float(r['probs'][int(t)]):.2f})", pictures))
    return report_io.Card(item.name, lines, rows)


def _summary(results: Mapping[str, Any], meta: Metadata) -> list[tuple[str, str]]:
    c = results["counts"]
    model = (f"<p>{html.escape(meta.arch)} from {html.escape(meta.path)} ({meta.kind}); input "
             f"{meta.input_size}x{meta.input_size}x{meta.channels}, intensities "
             f"{meta.value_range[0]:g} to {meta.value_range[1]:g}"
             f"{', ImageNet mean/std' if meta.mean else ''}; outputs: {meta.output}.</p>")
    methods = "".join(f"<li>{html.escape(k)}: {html.escape(str(v[1]))}</li>"
                      for k, v in results["methods"].items())
    counts = (f"<p>{c['listed']} files listed; {c['explained']} explained in this run, "
              f"{c['done_before']} done before; {c['skipped']} skipped. Targets: "
              f"{html.escape(results['targets'])}. Predictions: "
              f'<a href="predictions.csv">predictions.csv</a>; everything else: '
              f'<a href="results.json">results.json</a>.</p>')
    shown = "<p>Overlays show |map| scaled to its 99.5th percentile (jet: blue low, red " \
            "high) over the model's crop.</p>"
    parts = [("Model", model), ("Methods", f"<ul>{methods}</ul>{shown}"), ("Run", counts)]
    skipped = results["skipped"]
    if skipped:
        rows = "".join(f"<li>{html.escape(s['path'])}: {html.escape(s['reason'])}</li>"
                       for s in skipped[:SHOWN_SKIPS])
        more = (f"<p>... and {len(skipped) - SHOWN_SKIPS} more in results.json.</p>"
                if len(skipped) > SHOWN_SKIPS else "")
        parts.append(("Skipped files", f"<ul>{rows}</ul>{more}"))
    for w in results.get("warnings", []):
        parts.append(("Warning", f"<p>{html.escape(w)}</p>"))
    return parts


def write(workdir: str, done: Sequence[Item], meta: Metadata, methods: Sequence[str],
          results: Mapping[str, Any], *, page_size: int = 50, overlays: bool = True
          ) -> list[str]:
    """Writes predictions.csv and the gallery (index.html, page_NNN.html) for the images in
    `done`, read from their npz files; returns the gallery pages."""
    rows = [(item, read(map_path(workdir, item.name), maps=False)) for item in done]
    write_text(os.path.join(workdir, "predictions.csv"), _predictions(rows, meta))
    cards = [_card(item, r, meta, methods, overlays) for item, r in rows]
    return report_io.write_gallery(workdir, "cxr_jax explain", _summary(results, meta), cards,
                                   page_size=page_size)
