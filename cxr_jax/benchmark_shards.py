"""What preprocessed shards save: rows per second decoded from PNGs, written to shards and read
back, on the same images.

`shards_case` writes `n` phantom radiographs as 8-bit PNGs at `png_size` (NIH's are 1024 x 1024)
into workdir/pngs, then times (i) reading every row through `RecordSource` (decode, crop,
resize: what each epoch costs without shards), (ii) `write_shards` (the one-time preparation)
and (iii) reading every row through `ShardSource`, in order and in a shuffled order. Writes
workdir/shards.json.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
from PIL import Image

from cxr_jax.common.files import write_json
from cxr_jax.data import phantoms, shards
from cxr_jax.data.loader import RecordSource
from cxr_jax.data.records import Record


def _rate(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def shards_case(workdir: str, *, n: int = 200, png_size: int = 1024, image_size: int = 224,
                num_shards: int = 4) -> dict:
    """Rows/s of decoding PNGs, writing shards and reading them (see the module docstring)."""
    png_dir = os.path.join(workdir, "pngs")
    os.makedirs(png_dir, exist_ok=True)
    ph = phantoms.generate(n, image_size=256, seed=0, intensity="unit")
    recs = []
    for i in range(n):
        path = os.path.join(png_dir, f"{i:05d}.png")
        if not os.path.exists(path):
            img = Image.fromarray(np.uint8(np.clip(ph.images[i, ..., 0], 0, 1) * 255))
            img.resize((png_size, png_size), Image.BILINEAR).save(path)
        recs.append(Record(path, {"a": float(ph.labels[i, 0])}))
    names = ("a",)
    source = RecordSource(recs, names, image_size=image_size)
    decode = _rate(lambda: [source[i] for i in range(n)], n)
    out = os.path.join(workdir, "shards")
    shutil.rmtree(out, ignore_errors=True)
    write = _rate(lambda: shards.write_shards(recs, names, out, image_size=image_size,
                                              num_shards=num_shards), n)
    src = shards.ShardSource(out)
    read = _rate(lambda: [src[i] for i in range(n)], n)
    order = np.random.default_rng(0).permutation(n)
    shuffled = _rate(lambda: [src[int(i)] for i in order], n)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    result = {"rows": n, "png_size": png_size, "image_size": image_size,
              "decode_rows_per_s": decode, "write_rows_per_s": write,
              "read_rows_per_s": read, "shuffled_read_rows_per_s": shuffled,
              "bytes_per_row": size / n}
    write_json(os.path.join(workdir, "shards.json"), result)
    return result
