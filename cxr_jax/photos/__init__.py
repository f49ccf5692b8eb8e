"""Photos of X-rays: how classifiers and their explanations behave on CheXphoto-style photos.

`study.run(config, workdir)` trains (or loads) the models a config names, scores the same
held-out images on the originals and under every photo transform at every level (batched on
device by `cxr_jax.data.photo.batched`), explains a subset with a few attribution methods on
both, and writes `results.json`, CSV tables, figures and `index.html` (`cxr_jax.report.photos`).
The entry point is `python -m experiments.photos --config=experiments/configs/photos.py:quick`.
`real.run_real` scores model folders on the real CheXphoto release instead (photos against their
CheXpert originals), which `study.run` does when `config.data_dir` is set.

Modules: `study` (conditions, models, scoring, explanations, aggregation, answers), `real` (the
CheXphoto release).
"""

from cxr_jax.photos.study import PHASES, conditions, run

__all__ = ["PHASES", "conditions", "run"]
