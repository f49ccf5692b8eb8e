r"""The semantics study: train five models on phantoms, dissect them, explain a few predictions.

    python -m experiments.semantics --workdir runs/semantics \
        --config=experiments/configs/semantics.py:quick

Writes DIR/results.json, DIR/units_<layer>.md/.csv, DIR/figures/ and DIR/index.html; a second run
with the same --workdir resumes (training from its checkpoints, finished dissections kept).
--config.data_dir=FOLDER dissects on a real concept dataset instead of held-out phantoms.
"""

from absl import app, flags
from ml_collections import config_flags

from cxr_jax.semantics import study
from experiments import common

_WORKDIR = flags.DEFINE_string("workdir", "runs/semantics", "Output directory (resumes).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/semantics.py:quick", "Semantics study config.",
    lock_config=True)


def main(argv):
    del argv
    common.setup()
    results = study.run(_CONFIG.value, _WORKDIR.value)
    for name, res in results["training"].items():
        score = (f"mean AUROC {res['mean_auroc']:.3f}" if "mean_auroc" in res
                 else f"MAE {res.get('mae', float('nan')):.2f}")
        print(f"{name}: {score}, trained {res['train_seconds']:.0f} s")
    for name, layers in results["dissection"].items():
        for layer, d in layers.items():
            shown = {c: n for c, n in d["labelled"].items() if n}
            print(f"{name} {layer}: units labelled {shown}")
    for sentence in results.get("answers", []):
        print(sentence)
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items()))
    print(f"report: {_WORKDIR.value}/index.html")


if __name__ == "__main__":
    app.run(main)
