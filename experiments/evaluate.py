r"""Explains held-out images with the chosen methods and scores the maps against ground truth.

    python -m experiments.evaluate --workdir runs/eval --checkpoint runs/quickstart
    python -m experiments.evaluate --workdir runs/eval --checkpoint runs/quickstart \
        --config=experiments/configs/evaluate.py:fast --config.methods=gradcam,normgrad,iba

Writes DIR/results.json, DIR/per_image.jsonl (as it goes; a rerun resumes), tables per metric
(Markdown and CSV), DIR/agreement.png, DIR/overlays.png and DIR/index.html.
"""

from absl import app, flags
from ml_collections import config_flags

from cxr_jax import evaluation
from experiments import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training workdir.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/evaluate.py",
                                          "Evaluation config.", lock_config=True)


def main(argv):
    del argv
    common.setup()
    results = evaluation.evaluate_checkpoint(_WORKDIR.value, _CHECKPOINT.value, _CONFIG.value)
    for method, value in sorted(results["pointing_game"].items(), key=lambda kv: -kv[1]):
        print(f"{method:24s} pointing game {value:.3f}")


if __name__ == "__main__":
    app.run(main)
