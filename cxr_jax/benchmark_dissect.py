"""Benchmark case `dissect`: network dissection's time and memory as the dataset grows.

For each dataset size N (ascending), N phantoms at `image_size` are rendered once into raw
files in `workdir` (images float32 and concept masks, read back batch by batch with plain
reads, so neither the rendering nor the arrays count against the dissection's time or memory),
then `cxr_jax.semantics.dissect` runs its two streaming passes over them at `layer` of a randomly
initialised `model` (speed and memory depend on neither the weights nor the labels). Reported
per N: the dissection's wall time, seconds per image and its ratio to the forward pass F
measured in the same process (two passes, each a forward to the layer, so about 2 F per image
is the floor; the wall time includes the two passes' compiles), and the process's peak
resident memory during the run (Linux's VmHWM, reset after the rendering; and after the forward
alone, for comparison). Writes `workdir/dissect.json`.
"""

from __future__ import annotations

import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cxr_jax import models, runtime
from cxr_jax.benchmark import compile_timed, time_calls
from cxr_jax.common.files import write_json
from cxr_jax.data import phantoms
from cxr_jax.semantics import dissect


def _peak_rss_gb() -> float:
    """The process's peak resident memory since the last `_reset_peak` (VmHWM), in GiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # not Linux: no reset


def _reset_peak() -> None:
    """Restarts the peak count at the current resident memory (Linux; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class _Rendered:
    """n phantoms (seed 0) rendered once into two raw files and read back batch by batch with
    plain reads: memory-mapped arrays would count their resident pages as the process's memory
    and hide what the dissection itself holds."""

    def __init__(self, workdir: str, n: int, image_size: int, chunk: int = 64):
        t = time.perf_counter()
        self.n, self.size, self.c = n, image_size, len(phantoms.CONCEPTS)
        self.paths = [os.path.join(workdir, f"{kind}_{n}.raw") for kind in ("images", "masks")]
        with open(self.paths[0], "wb") as fi, open(self.paths[1], "wb") as fm:
            for start in range(0, n, chunk):
                b = phantoms.generate(min(chunk, n - start), image_size=image_size, seed=0,
                                      start=start)
                fi.write(np.ascontiguousarray(b.images, np.float32).tobytes())
                fm.write(np.ascontiguousarray(b.concepts, np.bool_).tobytes())
        self.seconds = time.perf_counter() - t

    def batches(self, batch_size: int):
        px = self.size * self.size
        with open(self.paths[0], "rb") as fi, open(self.paths[1], "rb") as fm:
            for start in range(0, self.n, batch_size):
                b = min(batch_size, self.n - start)
                x = np.fromfile(fi, np.float32, b * px).reshape(b, self.size, self.size, 1)
                m = np.fromfile(fm, np.bool_, b * self.c * px)
                yield x, m.reshape(b, self.c, self.size, self.size)

    def remove(self) -> None:
        for path in self.paths:
            os.remove(path)


def dissect_case(workdir: str, *, model_name: str = "densenet121", image_size: int = 224,
                 batch_size: int = 32, layer: str = "denseblock4", sizes=(2000, 10000),
                 num_classes: int = 14, keep_files: bool = False) -> dict:
    """Runs the case (see the module docstring); returns and writes its dict."""
    os.makedirs(workdir, exist_ok=True)
    model = models.get(model_name, num_classes=num_classes)
    x = jax.random.normal(jax.random.key(0), (batch_size, image_size, image_size, 1)) * 300.0
    variables = jax.jit(model.init)(jax.random.key(1), x)
    fwd, _ = compile_timed(lambda v, x: model.apply(v, x), variables, x)
    forward = statistics.median(time_calls(fwd, variables, x, repeats=3, slow_s=60.0))
    forward /= batch_size
    out = {"model": model_name, "layer": layer, "image_size": image_size,
           "batch_size": batch_size, "device": runtime.device_summary(),
           "forward_s_per_image": forward, "forward_peak_rss_gb": _peak_rss_gb(), "sizes": {}}
    for n in sorted(sizes):
        data = _Rendered(workdir, n, image_size)
        batches = lambda: data.batches(batch_size)
        _reset_peak()
        t = time.perf_counter()
        d = dissect(model, variables, batches, layer=layer, concept_names=phantoms.CONCEPTS)
        wall = time.perf_counter() - t
        out["sizes"][str(n)] = {
            "wall_s": wall, "s_per_image": wall / n, "ratio_to_forward": wall / n / forward,
            "render_s": data.seconds, "peak_rss_gb": _peak_rss_gb(),
            "units": int(len(d.thresholds)), "labelled": int((np.asarray(d.labels) >= 0).sum())}
        logging.info("dissect %d images: %.0f s (%.2f F per image), peak RSS %.2f GB", n, wall,
                     wall / n / forward, out["sizes"][str(n)]["peak_rss_gb"])
        write_json(os.path.join(workdir, "dissect.json"), out)
        if not keep_files:
            data.remove()
    return out
