"""The quickstart job: train a small classifier on phantoms, then report (the README's first command).

Steps, each resumable from the workdir:
  1. generate train and held-out phantoms (deterministic by seed);
  2. train the reduced model of `experiments/configs/train.py:quickstart` until its step budget
     (checkpoints every few hundred steps; a rerun resumes);
  3. explain held-out phantoms with every registered method and score the maps against the
     exact finding masks (`cxr_jax.evaluation`, settings of experiments/configs/evaluate.py:fast,
     results in `workdir/explain/`, resumable batch by batch);
  4. write `results.json` ({"auroc": {finding: value}, "pointing_game": {method: value, ...,
     "centre": value}, "iba_noise": {layer: {finding: score}}, "train_seconds",
     "resumed_from_step"}) and `index.html` with sample
     phantoms and their masks, training curves, the AUROC table, the localisation tables, the
     agreement matrix and overlays.
"""

from __future__ import annotations

import os

from absl import logging

from cxr_jax import evaluation, runtime, training
from cxr_jax.data import datasets, phantoms
from cxr_jax.report import save_curves, table_html, write_index


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
    results = training.train(config, workdir, data.train, data.eval, data.label_names,
                             progress=progress)
    explain = None
    if eval_config is not None:
        explain = evaluation.evaluate_checkpoint(os.path.join(workdir, "explain"), workdir,
                                                 eval_config, progress=progress)
        results["pointing_game"] = explain["pointing_game"]
        results["pointing_game_pooled"] = explain["pointing_game_pooled"]
        if "iba_noise" in explain:
            results["iba_noise"] = explain["iba_noise"]
        runtime.write_json(os.path.join(workdir, "results.json"), results)
    if not runtime.is_writer():
        return results
    test = data.extra["test"]
    phantoms.save_grid(_first(test, 16), os.path.join(workdir, "phantoms.png"), ncols=8)
    save_curves(results["history"], os.path.join(workdir, "curves.png"))
    rows = [{"finding": k, "AUROC": v, "target": 0.9, "met": "yes" if v >= 0.9 else "no"}
            for k, v in results["auroc"].items()]
    sections = [
        ("Setup", f"<p>Model <b>{config.model}</b> at {config.image_size}x{config.image_size}, "
                  f"{config.num_train} training and {config.num_test} held-out phantoms, "
                  f"{config.steps} steps of batch {config.batch_size}. Trained for "
                  f"{results['train_seconds']:.0f} s; this run resumed from step "
                  f"{results['resumed_from_step']}.</p>"),
        ("Held-out phantoms with their finding masks", '<img src="phantoms.png">'),
        ("Training curves", '<img src="curves.png">'),
        ("AUROC per finding (held-out phantoms)", table_html(rows)),
    ]
    if explain is not None:
        ex = os.path.join(workdir, "explain")
        sections.append(("Explanations", f"<p>Every method on up to "
                         f"{eval_config.max_per_finding} held-out positives per finding "
                         f"(counts {explain['counts']}); pointing-game tolerance "
                         f"{explain['settings']['tolerance_px']:.1f} px. Full per-image results: "
                         "explain/per_image.jsonl; tables: explain/table_*.md.</p>"))
        for heading, body in evaluation.report_sections(ex, explain, list(results["auroc"])):
            sections.append((heading, body.replace('src="', 'src="explain/')))
        if "iba_noise" in explain:
            sections.append(("IBA noise check", evaluation.iba_noise_section(
                explain["iba_noise"], config.loss == "mse")))
        sections.append(("Overlays (green: ground truth)", '<img src="explain/overlays.png">'))
    write_index(workdir, "cxr_jax quickstart", sections)
    logging.info("Report written to %s", os.path.join(workdir, "index.html"))
    return results


def _first(batch: phantoms.PhantomBatch, n: int) -> phantoms.PhantomBatch:
    """The first n phantoms of a batch (array fields sliced, name fields kept)."""
    return batch._replace(**{k: v[:n] for k, v in batch._asdict().items()
                             if hasattr(v, "shape") and getattr(v, "ndim", 0) > 0})
