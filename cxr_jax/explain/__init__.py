"""Explain your own radiographs: a model and a folder of images -> maps, overlays, a gallery.

    python -m experiments.explain --model RUN_OR_CONVERTED_DIR --images FOLDER --workdir OUT

or from Python (a notebook):

    results = cxr_jax.explain.explain_files("runs/quickstart", "my_pngs/", "runs/explain")
    r = cxr_jax.explain.read("runs/explain/maps/<name>.npz")     # probs, targets, maps

or, without writing anything, batch by batch:

    loaded = cxr_jax.models.load("runs/quickstart")
    specs = cxr_jax.explain.method_specs(loaded, "gradcam,integrated_gradients")
    ready = cxr_jax.attribution.prepare_all(specs, loaded.model, loaded.variables)
    explainer = cxr_jax.explain.Explainer(loaded, ready, cxr_jax.explain.parse("top1",
                                          loaded.metadata))
    probs, scores, targets, maps = explainer(x)          # x: [B, S, S, C] model input

Modules:
  inputs   which files (file, folder, CSV table), decoding and preprocessing, skip reasons
  targets  --targets (top1 / topK / all / names) and the ranking scores
  engine   Explainer (compiled prediction step and one explainer per method, batch sharded
           over the local devices) and the pipelined batch stream
  outputs  per-image npz and overlay PNGs, and reading them back
  report   predictions.csv and the paged gallery (index.html)
  run      explain_files, the study that ties them together
"""

from cxr_jax.explain.engine import Explainer, Result, batch_key, stream
from cxr_jax.explain.inputs import Item, Skip, find_images, load_input
from cxr_jax.explain.outputs import read
from cxr_jax.explain.run import DEFAULT_METHODS, explain_files, method_specs, named_baseline
from cxr_jax.explain.targets import Targets, parse, ranking_scores

__all__ = ["DEFAULT_METHODS", "Explainer", "Item", "Result", "Skip", "Targets", "batch_key",
           "explain_files", "find_images", "load_input", "method_specs", "named_baseline", "parse",
           "ranking_scores", "read", "stream"]
