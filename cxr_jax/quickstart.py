"""The quickstart study: train a small classifier on phantoms, explain, report (the README's
first command).

Steps, each resumable from the workdir:
  1. render training and held-out phantoms once (deterministic by seed);
  2. train the reduced model of `experiments/configs/train.py:quickstart` until its step budget
     (checkpoints every few hundred steps; a rerun resumes); the trained model stays in memory;
  3. explain held-out phantoms with the first-look methods and score the maps against the
     exact finding masks (`cxr_jax.evaluation.evaluate`, settings of
     experiments/configs/evaluate.py:quickstart, results in `workdir/explain/`, resumable
     batch by batch);
  4. write `results.json` ({"auroc": {finding: value}, "pointing_game": {method: value, ...,
     "centre": value}, "pointing_game_ci", "iba_noise": {layer: {finding: score}},
     "seconds": {phase: wall seconds}, "train_seconds", "resumed_from_step", "device"}) and
     `index.html`: overlays, the pointing game as a heatmap and with intervals, training
     curves, the phantoms beside real radiographs (when given) with their realism
     statistics, then the tables, folded.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from cxr_jax import evaluation, runtime, training
from cxr_jax.common.files import write_json
from cxr_jax.data import datasets, phantoms
from cxr_jax.data.images import load_image, preprocess
from cxr_jax.data.phantoms.realism import summary as realism_summary
from cxr_jax.explain.inputs import find_images
from cxr_jax.report import figures, sections, tables, write_index
from cxr_jax.report.html import caption, collapsed, image

PHASES = ("phantoms", "training", "statistics", "explanation", "metrics", "report")


def run(workdir: str, config, eval_config=None, *, progress: bool = True,
        real_images: str = "") -> dict:
    """Runs (or resumes) the quickstart in `workdir`; returns the results dict.

    Args:
      workdir: output folder (a rerun resumes).
      config: training config (experiments/configs/train.py:quickstart).
      eval_config: evaluation config (experiments/configs/evaluate.py:quickstart), or None to
        stop after training.
      real_images: optional image file or folder of real radiographs to show beside the
        phantoms in the report (with their realism statistics).
    """
    start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    data = datasets.build(config)
    seconds = {"phantoms": time.perf_counter() - start}
    with config.unlocked():
        config.loss = config.loss or data.loss
    mark = time.perf_counter()
    trained = training.fit(config, workdir, data.train, data.eval, data.label_names,
                           progress=progress)
    seconds["training"] = time.perf_counter() - mark
    results = trained.results
    explain = None
    if eval_config is not None:
        explain = _explain(os.path.join(workdir, "explain"), config, eval_config, data, trained,
                           progress)
        for key in ("pointing_game", "pointing_game_pooled", "pointing_game_ci", "iba_noise"):
            if key in explain:
                results[key] = explain[key]
        seconds.update(explain["seconds"])
    mark = time.perf_counter()
    results["seconds"] = seconds  # the report's table shows the phases before its own
    if runtime.is_writer():
        _report(workdir, config, eval_config, data, results, explain, real_images)
    seconds["report"] = seconds.get("report", 0.0) + time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start  # (results["seconds"] is this dict)
    logging.info("Phase times (s): %s", ", ".join(f"{k} {seconds[k]:.0f}" for k in
                                                  (*PHASES, "total") if k in seconds))
    if runtime.is_writer():
        write_json(os.path.join(workdir, "results.json"), results)
    return results


def _explain(workdir: str, config, eval_config, data, trained: training.Trained,
             progress: bool) -> dict:
    """The evaluation study on the trained model in memory and the phantoms already rendered."""
    data_cfg = config.copy_and_resolve_references()
    with data_cfg.unlocked():
        data_cfg.num_test = eval_config.num_test
    loc = datasets.localisation_set(data_cfg, data.label_names, data)
    return evaluation.evaluate(
        workdir, trained.model, trained.variables, loc, eval_config,
        estimation_images=lambda: datasets.estimation_images(data_cfg, eval_config.iba_samples,
                                                             data),
        regression=config.loss == "mse",
        setup=f"Model {config.model} trained in this run, {config.dataset} at "
              f"{config.image_size}px.",
        settings={"model": config.model, "dataset": config.dataset}, progress=progress)


def _report(workdir, config, eval_config, data, results, explain, real_images) -> None:
    test = data.extra["test"]
    figures.save_curves(results["history"], os.path.join(workdir, "curves.png"))
    rows = [{"finding": k, "AUROC": v, "target": 0.9, "met": "yes" if v >= 0.9 else "no"}
            for k, v in results["auroc"].items()]
    page = [("Setup", f"<p>Model <b>{config.model}</b> at {config.image_size}x{config.image_size}, "
                      f"{config.num_train} training and {config.num_test} held-out phantoms "
                      f"(style {config.get('phantom_style', 'v2')}, contrast "
                      f"{config.get('phantom_contrast', 1.0):g}), {config.steps} steps of "
                      f"batch {config.batch_size}. Trained for {results['train_seconds']:.0f} "
                      f"s; this run resumed from step {results['resumed_from_step']}.</p>")]
    if explain is not None:
        page.append(("Explanations", f"<p>{', '.join(explain['settings']['methods'])} on up "
                     f"to {eval_config.max_per_finding} held-out positives per finding "
                     f"({sections.counts_text(explain['counts'])}); pointing-game tolerance "
                     f"{explain['settings']['tolerance_px']:.1f} px. The complete evaluation "
                     "(every method and metric) is the README's next command.</p>"))
        page += sections.lead(explain, list(results["auroc"]), os.path.join(workdir, "explain"),
                              prefix="explain/")
    page.append(sections.figure("Training curves", "curves.png"))
    page.append(("AUROC per finding (held-out phantoms)", tables.html(rows)))
    page.append(_realism_section(workdir, test, real_images))
    if explain is not None:
        page += evaluation.report_sections(os.path.join(workdir, "explain"), explain,
                                           list(results["auroc"]),
                                           regression=config.loss == "mse", prefix="explain/")
    page.append(collapsed("Phase times", tables.html(
        [{"phase": k, "seconds": round(v, 1)} for k, v in results.get("seconds", {}).items()])
        + "<p>Writing this page adds to the report phase; results.json and the log hold the "
        "final times and the total.</p>"))
    write_index(workdir, "cxr_jax quickstart", page)
    logging.info("Report written to %s", os.path.join(workdir, "index.html"))


def _realism_section(workdir: str, test, real_images: str, n: int = 4):
    """Held-out phantoms (plain and with their finding masks) beside real radiographs when
    `real_images` names some, and the realism statistics of both."""
    columns, batches = {}, {}
    real = _load_real(real_images, test.images.shape[1]) if real_images else []
    if len(real):
        n = min(n, len(real))
        columns["real"] = real[:n]
        batches["real radiographs"] = phantoms.realism(real)
    grey = (test.images[:n, ..., 0] - test.images[:n].min()) / np.ptp(test.images[:n])
    columns.update({"phantom": grey, "phantom, finding masks": grey})
    batches["phantoms"] = phantoms.realism(test.images[:64])
    figures.save_columns(columns, os.path.join(workdir, "realism.png"),
                         contours={"phantom, finding masks": test.masks[:n]})
    rows = []
    for name, stats in batches.items():
        summ = realism_summary(stats)
        rows.append({"images": f"{name} ({len(stats['spectral_slope'])})",
                     **{k: f"{summ[k][0]:.3g} ± {summ[k][1]:.2g}" for k in summ}})
    note = "" if len(real) else (
        " Pass --real_images=FILE_OR_FOLDER to show real radiographs beside them; the "
        "README shows three.")
    return ("Phantoms and real radiographs", image("realism.png") + caption(
        "Realism statistics (cxr_jax.data.phantoms.realism): spectral slope, share of power "
        "in the top eighth of frequencies, 99th/50th percentile of the gradient magnitude."
        + note) + tables.html(rows))


def _load_real(path: str, size: int) -> np.ndarray:
    """Up to 16 readable grey images of `path` (file or folder) at size x size in [0, 1]."""
    items, _ = find_images(path)
    out = []
    for item in items[:16]:
        try:
            out.append(preprocess(load_image(item.path), size=size, intensity="unit")[0][..., 0])
        except (OSError, ValueError) as err:
            logging.warning("Real image %s left out of the realism figure: %s", item.path, err)
    return np.stack(out) if out else np.zeros((0, size, size), np.float32)
