r"""Decodes and resizes a real dataset's training images once, into ArrayRecord shards.

    python -m experiments.prepare --out /data/nih_224 --num_shards 64 \
        --config=experiments/configs/train.py --config.dataset=nih --config.data_dir=/data/nih
    python -m experiments.train --workdir runs/nih --config=experiments/configs/train.py \
        --config.dataset=nih --config.data_dir=/data/nih --config.shards_dir=/data/nih_224

The training config names the dataset, its folder and the image size; the shards hold its
training split (`cxr_jax.data.shards`). A rerun resumes (finished shards are kept); with
--multihost every process writes its share of the shards. Prints the rows written per second.
"""

import time

import jax
from absl import app, flags
from ml_collections import config_flags

from cxr_jax.data import real, shards
from experiments import common

_OUT = flags.DEFINE_string("out", None, "Output folder of the shards.", required=True)
_SHARDS = flags.DEFINE_integer("num_shards", 64, "Number of shard files.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/train.py", "Training config: dataset, data_dir, image_size.",
    lock_config=True)


def main(argv):
    del argv
    common.setup()
    config = _CONFIG.value
    train, _, names, _ = real.splits(config)
    t0 = time.perf_counter()
    shards.write_shards(train, names, _OUT.value, image_size=config.image_size,
                        num_shards=_SHARDS.value, process_index=jax.process_index(),
                        process_count=jax.process_count(),
                        progress=lambda d, n: print(f"shard {d}/{n} done", flush=True))
    dt = time.perf_counter() - t0
    print(f"{len(train)} training rows in {_SHARDS.value} shards under {_OUT.value}: "
          f"{dt:.1f} s ({len(train) / max(dt, 1e-9):.1f} rows/s, including shards already "
          f"there)")


if __name__ == "__main__":
    app.run(main)
