"""The quickstart job: train a small classifier on phantoms, then report (the README's first command).

Steps, each resumable from the workdir:
  1. generate train and held-out phantoms (deterministic by seed);
  2. train the reduced model of `experiments/configs/train.py:quickstart` until its step budget
     (checkpoints every few hundred steps; a rerun resumes);
  3. write `results.json` ({"auroc": {finding: value}, "train_seconds", "resumed_from_step"})
     and `index.html` with sample phantoms and their masks, training curves and the AUROC table.
"""

from __future__ import annotations

import os

from absl import logging

from cxr_jax import runtime, training
from cxr_jax.data import datasets, phantoms
from cxr_jax.report import save_curves, table_html, write_index


def run(workdir: str, config, *, progress: bool = True) -> dict:
    """Runs (or resumes) the quickstart in `workdir`; returns the results dict."""
    os.makedirs(workdir, exist_ok=True)
    data = datasets.build(config)
    with config.unlocked():
        config.loss = config.loss or data.loss
    results = training.train(config, workdir, data.train, data.eval, data.label_names,
                             progress=progress)
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
    write_index(workdir, "cxr_jax quickstart", sections)
    logging.info("Report written to %s", os.path.join(workdir, "index.html"))
    return results


def _first(batch: phantoms.PhantomBatch, n: int) -> phantoms.PhantomBatch:
    """The first n phantoms of a batch (array fields sliced, name fields kept)."""
    return batch._replace(**{k: v[:n] for k, v in batch._asdict().items()
                             if hasattr(v, "shape") and getattr(v, "ndim", 0) > 0})
