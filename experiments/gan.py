r"""The GAN study: medXGAN explanations of a phantom classifier, scored against exact masks.

    python -m experiments.gan --workdir runs/gan --config=experiments/configs/gan.py:quick

Trains a classifier on phantoms (or takes --config.classifier=DIR), trains the explanation GAN
for one finding guided by it, inverts held-out positives and writes DIR/results.json, the
strips, response curves, maps and tables in DIR/index.html; a second run with the same
--workdir resumes (finished phases are skipped).
"""

from absl import app, flags
from ml_collections import config_flags

from cxr_jax.generative import study
from experiments import common

_WORKDIR = flags.DEFINE_string("workdir", "runs/gan", "Output directory (resumes).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/gan.py:quick", "GAN study config.", lock_config=True)


def main(argv):
    del argv
    common.setup()
    results = study.run(_CONFIG.value, _WORKDIR.value)
    for sentence in results["answers"]:
        print(sentence)
    print("run: " + ", ".join(f"{k} {v}" for k, v in results["run"].items()))
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items()))
    print(f"report: {_WORKDIR.value}/index.html")


if __name__ == "__main__":
    app.run(main)
