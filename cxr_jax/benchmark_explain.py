"""Benchmark case `explain_folder`: the explain command against the sum of its parts.

On `n` phantom PNGs (8-bit, `image_size` square) and a converted-checkpoint folder holding a
randomly initialised `model` (TorchXRayVision convention, 14 NIH findings), it measures
  * decode: `explain.load_input` over every image, one after another;
  * forward and each method's seconds per image and compile time, as the benchmark does, with
    the explain command's settings (the registry's fast ones: IG 16 steps) on one batch;
  * the whole command, `python -m experiments.explain` in a fresh process with no compilation
    cache, by wall clock;
and writes `workdir/explain_folder.json` with the ratio
    wall / (decode + n x sum of per-image method times + sum of compile times).
What is outside the parenthesis (process start and imports, model loading, the prediction
step, IBA statistics, writing npz/PNG files and the gallery) is the rest the ratio measures;
the command's own results.json timings, copied in, say where it goes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from cxr_jax import attribution, convert, explain, models, runtime
from cxr_jax.benchmark import compile_timed, time_calls, time_method
from cxr_jax.common.files import read_json, write_json
from cxr_jax.data import phantoms, records


def _fixture(root: str, model_name: str, n: int, size: int) -> tuple[str, str]:
    """The model folder and the image folder (made once, reused by reruns)."""
    model_dir, image_dir = os.path.join(root, "model"), os.path.join(root, "images")
    if not os.path.exists(os.path.join(model_dir, "model.json")):
        model = models.get(model_name, num_classes=len(records.NIH_FINDINGS))
        variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 1)))
        convert.save(model_dir, variables, {
            "arch": model_name, "num_classes": model.num_classes, "in_channels": 1,
            "source": "torchxrayvision", "pathologies": list(records.NIH_FINDINGS),
            "input_convention": convert.input_convention("torchxrayvision", 1, size)})
    if len(os.listdir(image_dir) if os.path.isdir(image_dir) else []) != n:
        os.makedirs(image_dir, exist_ok=True)
        images = phantoms.generate(n, image_size=size, seed=0, intensity="unit").images
        for i, im in enumerate(images[..., 0]):
            Image.fromarray(np.round(im * 255).astype(np.uint8)).save(
                os.path.join(image_dir, f"img_{i:04d}.png"))
    return model_dir, image_dir


def explain_folder(workdir: str, *, model_name: str = "densenet121", n_images: int = 100,
                   image_size: int = 224, batch_size: int = 8,
                   methods=attribution.FIRST_LOOK, repeats: int = 3,
                   slow_s: float = 30.0) -> dict:
    """Runs the case (see the module docstring); returns and writes its dict."""
    root = os.path.join(workdir, "explain_folder")
    model_dir, image_dir = _fixture(root, model_name, n_images, image_size)
    loaded = models.load(model_dir)
    paths = sorted(os.path.join(image_dir, f) for f in os.listdir(image_dir))
    t0 = time.perf_counter()
    decoded = [explain.load_input(p, loaded.metadata)[0] for p in paths]
    decode_s = time.perf_counter() - t0
    x = jnp.asarray(np.stack(decoded[:batch_size]))
    model, variables = loaded.model, loaded.variables
    fwd, fwd_compile = compile_timed(lambda v, x: model.apply(v, x), variables, x)
    forward = float(np.median(time_calls(fwd, variables, x, repeats=5, slow_s=slow_s))) / len(x)
    targets = jnp.argmax(fwd(variables, x), axis=-1).astype(jnp.int32)
    ready = attribution.prepare_all(explain.method_specs(loaded, methods), model, variables, x)
    timed = {name: time_method(p, model, variables, x, targets, jax.random.key(0),
                               forward=forward, repeats=repeats, slow_s=slow_s)
             for name, p in ready.items()}
    out = os.path.join(root, "run")
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "experiments.explain", "--model", model_dir, "--images",
               image_dir, "--workdir", out, "--methods", ",".join(methods),
               f"--config.batch_size={batch_size}", "--compilation_cache="]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"The explain command failed:\n{proc.stderr[-3000:]}")
    per_image = sum(m["s_per_image"] for m in timed.values())
    compile_s = sum(m["compile_s"] for m in timed.values())
    expected = decode_s + n_images * per_image + compile_s
    command_results = read_json(os.path.join(out, "results.json"))
    result = {
        "setup": [model_name, image_size, batch_size, n_images, list(methods)],
        "device": runtime.device_summary(),
        "forward_s_per_image": forward, "forward_compile_s": fwd_compile,
        "decode_s": decode_s, "methods": timed, "expected_s": expected, "wall_s": wall,
        "ratio": wall / expected, "command_timings": command_results["timings"],
        "command_counts": command_results["counts"],
    }
    logging.info("explain_folder: %.1f s wall vs %.1f s expected (ratio %.2f)", wall, expected,
                 wall / expected)
    write_json(os.path.join(workdir, "explain_folder.json"), result)
    return result
