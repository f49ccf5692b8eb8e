r"""The photo study: models and their explanations on CheXphoto-style photos of X-rays.

    python -m experiments.photos --workdir runs/photos --config=experiments/configs/photos.py:quick

Writes DIR/results.json, DIR/classification.csv/.md, DIR/explanation.csv/.md, DIR/figures/ and
DIR/index.html; a second run with the same --workdir resumes (training from its checkpoints,
finished conditions kept).
"""

from absl import app, flags
from ml_collections import config_flags

from cxr_jax.photos import study
from experiments import common

_WORKDIR = flags.DEFINE_string("workdir", "runs/photos", "Output directory (resumes).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/photos.py:quick", "Photo study config.", lock_config=True)


def main(argv):
    del argv
    common.setup()
    results = study.run(_CONFIG.value, _WORKDIR.value)
    for name, info in results["models"].items():
        print(f"{name}: mean AUROC {info['mean_auroc']:.3f} on the originals")
    for sentence in results["answers"]:
        print(sentence)
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items()))
    print(f"report: {_WORKDIR.value}/index.html")


if __name__ == "__main__":
    app.run(main)
