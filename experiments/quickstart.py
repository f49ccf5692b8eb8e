r"""The main job: train a small classifier on synthetic phantoms and write a report.

    python -m experiments.quickstart --workdir runs/quickstart

Writes DIR/results.json and DIR/index.html; a second run with the same --workdir resumes.
"""

from absl import app, flags
from ml_collections import config_flags

from cxr_jax import quickstart, runtime

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Output directory (resumes).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/train.py:quickstart", "Quickstart config.", lock_config=True)


def main(argv):
    del argv
    runtime.setup()
    results = quickstart.run(_WORKDIR.value, _CONFIG.value)
    worst = min(results["auroc"].items(), key=lambda kv: kv[1])
    print(f"AUROC per finding: { {k: round(v, 3) for k, v in results['auroc'].items()} }")
    print(f"lowest: {worst[0]} {worst[1]:.3f}; trained {results['train_seconds']:.0f} s; "
          f"report: {_WORKDIR.value}/index.html")


if __name__ == "__main__":
    app.run(main)
