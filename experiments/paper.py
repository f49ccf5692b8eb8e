r"""Reproduces a published comparison's table (on phantoms at reduced size, or a real dataset).

    python -m experiments.paper --workdir runs/normgrad \
        --config=experiments/configs/paper_normgrad.py:reduced
    python -m experiments.paper --workdir runs/cam_boxes \
        --config=experiments/configs/paper_cam_boxes.py:full --config.train.data_dir=/data/nih

Writes DIR/table.md, DIR/table.csv, DIR/results.json, per-model training and evaluation folders
(with agreement matrices and overlays) and DIR/index.html. Resumable.
"""

from absl import app, flags
from ml_collections import config_flags

from cxr_jax import paper
from experiments import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "A paper comparison config.",
                                          lock_config=True)


def main(argv):
    del argv
    common.setup()
    paper.run(_WORKDIR.value, _CONFIG.value)
    with open(f"{_WORKDIR.value}/table.md") as f:
        print(f.read())


if __name__ == "__main__":
    app.run(main)
