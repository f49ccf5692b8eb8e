r"""Trains a classifier on phantoms (default) or a real dataset; resumable from --workdir.

    python -m experiments.train --workdir runs/train \
        --config=experiments/configs/train.py:quickstart --config.steps=2000

Writes DIR/results.json (metrics, history, train_seconds, resumed_from_step) and orbax
checkpoints under DIR/checkpoints (periodic) and DIR/best (best held-out score).
"""

from absl import app, flags
from ml_collections import config_flags

from cxr_jax import training
from experiments import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (resumes if it has a "
                               "checkpoint).", required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/train.py", "Training config (ml_collections).",
    lock_config=True)


def main(argv):
    del argv
    common.setup()
    results = training.train_and_evaluate(_CONFIG.value, _WORKDIR.value).results
    metric = results.get("auroc") or results.get("accuracy") or results.get("mae")
    print(f"done: {metric}  ({results['train_seconds']:.0f} s)")


if __name__ == "__main__":
    app.run(main)
