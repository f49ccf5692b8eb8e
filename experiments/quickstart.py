r"""The main job: train a small classifier on synthetic phantoms and write a report.

    python -m experiments.quickstart --workdir runs/quickstart

Writes DIR/results.json and DIR/index.html; a second run with the same --workdir resumes.
"""

from absl import app, flags
from ml_collections import config_flags

from cxr_jax import quickstart
from experiments import common

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Output directory (resumes).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/train.py:quickstart", "Training config.", lock_config=True)
_EVAL = config_flags.DEFINE_config_file(
    "eval_config", "experiments/configs/evaluate.py:quickstart",
    "Explanation/evaluation config.", lock_config=True)
_EXPLAIN = flags.DEFINE_bool("explain", True, "Explain and score after training.")
_REAL = flags.DEFINE_string("real_images", "", "Optional image file or folder of real "
                            "radiographs to show beside the phantoms in the report.")


def main(argv):
    del argv
    common.setup()
    results = quickstart.run(_WORKDIR.value, _CONFIG.value,
                             _EVAL.value if _EXPLAIN.value else None, real_images=_REAL.value)
    worst = min(results["auroc"].items(), key=lambda kv: kv[1])
    print(f"AUROC per finding: { {k: round(v, 3) for k, v in results['auroc'].items()} }")
    print(f"lowest: {worst[0]} {worst[1]:.3f}; trained {results['train_seconds']:.0f} s")
    if "pointing_game" in results:
        pg = sorted(results["pointing_game"].items(), key=lambda kv: -kv[1])
        print("pointing game: " + ", ".join(f"{m} {v:.3f}" for m, v in pg))
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items()))
    print(f"report: {_WORKDIR.value}/index.html")


if __name__ == "__main__":
    app.run(main)
