r"""Explains your own radiographs with your own model: maps, overlays, predictions, a gallery.

    python -m experiments.explain --model runs/quickstart --images my_pngs/ --workdir runs/ex
    python -m experiments.explain --model xrv_dir --images Data_Entry_2017.csv \
        --root /data/nih --workdir runs/nih_ex --methods gradcam,iba --targets Effusion,Mass

--model is a training workdir (experiments.train / experiments.quickstart) or a converted
checkpoint (python -m cxr_jax.convert). --images is an image file, a folder (recursive: PNG,
JPEG, 8/16-bit, DICOM) or a CSV table with a path column (NIH "Image Index", CheXpert "Path";
--root is the folder those paths are relative to). Writes DIR/maps/<image>.npz,
DIR/overlays/<image>/*.png, DIR/predictions.csv, DIR/results.json and DIR/index.html (a paged
gallery). A rerun with the same --workdir skips images already done. See
`cxr_jax.explain.explain_files` for every option.
"""

from absl import app, flags
from ml_collections import config_flags

from cxr_jax import explain
from experiments import common

_MODEL = flags.DEFINE_string("model", None, "Training workdir or converted checkpoint folder.",
                             required=True)
_IMAGES = flags.DEFINE_string("images", None, "Image file, folder or CSV table.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_METHODS = flags.DEFINE_list("methods", list(explain.DEFAULT_METHODS),
                             "Attribution methods (registered names).")
_TARGETS = flags.DEFINE_string("targets", "top1",
                               "top1, topK (K highest-scoring findings), all, or finding names.")
_LAYER = flags.DEFINE_string("layer", None, "Layer of the methods that explain one layer "
                             "(a stage name or alias such as stride16); default: the model's.")
_ROOT = flags.DEFINE_string("root", None, "For a CSV: the folder its paths are relative to.")
_COLUMN = flags.DEFINE_string("column", None, "For a CSV: its path column (default: found).")
_IBA_STATS = flags.DEFINE_string("iba_stats", None, "IBA statistics file or folder from an "
                                 "earlier run, instead of estimating them from the images.")
_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/explain.py",
                                          "Hyperparameters and output options.")


def main(argv):
    del argv
    common.setup()
    c = _CONFIG.value
    hparams = {m: c.hparams[m].to_dict() for m in _METHODS.value if m in c.hparams}
    results = explain.explain_files(
        _MODEL.value, _IMAGES.value, _WORKDIR.value, methods=_METHODS.value,
        targets=_TARGETS.value, layer=_LAYER.value, hparams=hparams, root=_ROOT.value,
        column=_COLUMN.value, batch_size=c.batch_size, iba_stats=_IBA_STATS.value,
        stats_images=c.stats_images, maps_dtype=c.maps_dtype, overlays=c.overlays,
        page_size=c.page_size, min_side=c.min_side, seed=c.seed)
    n = results["counts"]
    print(f"{n['explained']} explained, {n['done_before']} done before, {n['skipped']} skipped "
          f"({results['timings']['total']:.1f} s): {_WORKDIR.value}/index.html")


if __name__ == "__main__":
    app.run(main)
