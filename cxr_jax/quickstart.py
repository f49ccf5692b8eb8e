"""The quickstart study: train a small classifier on phantoms, explain, report (the README's
first command).

Steps, each resumable from the workdir:
  1. render training and held-out phantoms once (deterministic by seed);
  2. train the reduced model of `experiments/configs/train.py:quickstart` until its step budget
     (checkpoints every few hundred steps; a rerun resumes); the trained model stays in memory;
  3. explain held-out phantoms with every registered method and score the maps against the
     exact finding masks (`cxr_jax.evaluation.evaluate`, settings of
     experiments/configs/evaluate.py:fast, results in `workdir/explain/`, resumable batch by
     batch);
  4. write `results.json` ({"auroc": {finding: value}, "pointing_game": {method: value, ...,
     "centre": value}, "iba_noise": {layer: {finding: score}}, "train_seconds",
     "resumed_from_step"}) and `index.html` with sample phantoms and their masks, training
     curves, the AUROC table, the localisation tables, the agreement matrix and overlays.
"""

from __future__ import annotations

import os

from absl import logging

from cxr_jax import evaluation, runtime, training
from cxr_jax.common.files import write_json
from cxr_jax.data import datasets, phantoms
from cxr_jax.report import figures, sections, tables, write_index


def run(workdir: str, config, eval_config=None, *, progress: bool = True) -> dict:
    """Runs (or resumes) the quickstart in `workdir`; returns the results dict.

    Args:
      workdir: output folder (a rerun resumes).
      config: training config (experiments/configs/train.py:quickstart).
      eval_config: evaluation config (experiments/configs/evaluate.py:fast), or None to stop
        after training.
    """
    os.makedirs(workdir, exist_ok=True)
    data = datasets.build(config)
    with config.unlocked():
        config.loss = config.loss or data.loss
    trained = training.fit(config, workdir, data.train, data.eval, data.label_names,
                           progress=progress)
    results = trained.results
    explain = None
    if eval_config is not None:
        explain = _explain(os.path.join(workdir, "explain"), config, eval_config, data, trained,
                           progress)
        results["pointing_game"] = explain["pointing_game"]
        results["pointing_game_pooled"] = explain["pointing_game_pooled"]
        results["pointing_game_ci"] = explain["pointing_game_ci"]
        if "iba_noise" in explain:
            results["iba_noise"] = explain["iba_noise"]
        if runtime.is_writer():
            write_json(os.path.join(workdir, "results.json"), results)
    if runtime.is_writer():
        _report(workdir, config, eval_config, data, results, explain)
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


def _report(workdir, config, eval_config, data, results, explain) -> None:
    phantoms.save_grid(phantoms.first(data.extra["test"], 16),
                       os.path.join(workdir, "phantoms.png"), ncols=8)
    figures.save_curves(results["history"], os.path.join(workdir, "curves.png"))
    rows = [{"finding": k, "AUROC": v, "target": 0.9, "met": "yes" if v >= 0.9 else "no"}
            for k, v in results["auroc"].items()]
    page = [
        ("Setup", f"<p>Model <b>{config.model}</b> at {config.image_size}x{config.image_size}, "
                  f"{config.num_train} training and {config.num_test} held-out phantoms, "
                  f"{config.steps} steps of batch {config.batch_size}. Trained for "
                  f"{results['train_seconds']:.0f} s; this run resumed from step "
                  f"{results['resumed_from_step']}.</p>"),
        sections.figure("Held-out phantoms with their finding masks", "phantoms.png"),
        sections.figure("Training curves", "curves.png"),
        ("AUROC per finding (held-out phantoms)", tables.html(rows)),
    ]
    if explain is not None:
        page.append(("Explanations", f"<p>Every method on up to "
                     f"{eval_config.max_per_finding} held-out positives per finding "
                     f"(counts {explain['counts']}); pointing-game tolerance "
                     f"{explain['settings']['tolerance_px']:.1f} px. Full per-image results: "
                     "explain/per_image.jsonl; tables: explain/table_*.md.</p>"))
        page += evaluation.report_sections(os.path.join(workdir, "explain"), explain,
                                           list(results["auroc"]),
                                           regression=config.loss == "mse", prefix="explain/")
    write_index(workdir, "cxr_jax quickstart", page)
    logging.info("Report written to %s", os.path.join(workdir, "index.html"))
