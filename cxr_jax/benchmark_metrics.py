"""Benchmark case `metrics`: what each evaluation metric costs, per image and in forward passes.

On a randomly initialised `model` (speed does not depend on the weights or the maps), one
batch of `batch_size` images and random maps, it times (compiled once, warmed up, median of
`repeats` calls):

  pointing_game          jitted argmax and distance test (no model call)
  boxes_iou              multi-Otsu boxes of every map (host, scikit-image) and their IoU
  ehr                    effective heat ratio (host)
  insertion_deletion@S   both curves with S steps over the top half of the pixels, one ranking
                         and one lax.map (2 (S + 1) forward passes per image)
  insertion_deletion x M the same (at the first S) for the maps of M methods in one call (as
                         the evaluation engine runs them), reported per image and method
  sensitivity_n          num_n x num_masks masked forward passes per image
  randomisation          Grad-CAM under the model's top `layers` cascading re-initialisations
                         (the variable sets stacked, one vmapped call: layers x (forward +
                         backward)) plus Spearman and SSIM against the trained map

and writes `workdir/metrics.json` {"forward_s_per_image", "metrics": {name: {"s_per_image",
"ratio_to_forward", "forwards_per_image", "compile_s"}}}.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cxr_jax import attribution, metrics, models
from cxr_jax.benchmark import compile_timed, time_calls
from cxr_jax.common.files import write_json


def _entry(times, n, forward, forwards, compile_s=0.0) -> dict:
    per_image = statistics.median(times) / n
    return {"s_per_image": per_image, "ratio_to_forward": per_image / forward,
            "forwards_per_image": forwards, "compile_s": compile_s}


def metrics_case(workdir: str, *, model_name: str = "densenet121", image_size: int = 224,
                 batch_size: int = 8, num_classes: int = 14, curve_steps=(8, 32),
                 methods: int = 5, num_n: int = 10, num_masks: int = 10, layers: int = 3,
                 repeats: int = 3, slow_s: float = 60.0) -> dict:
    """Runs the case (see the module docstring); returns and writes its dict."""
    os.makedirs(workdir, exist_ok=True)
    model = models.get(model_name, num_classes=num_classes)
    key = jax.random.key(0)
    b, s = batch_size, image_size
    x = jax.random.normal(key, (b, s, s, 1), jnp.float32) * 300.0
    variables = jax.jit(model.init)(jax.random.key(1), x)
    t = jnp.arange(b, dtype=jnp.int32) % num_classes
    sal = jax.random.uniform(jax.random.key(2), (b, s, s))
    sal_np = np.asarray(sal)
    masks = np.zeros((b, s, s), bool)
    masks[:, s // 4:s // 2, s // 4:s // 2] = True
    fwd, _ = compile_timed(lambda v, x: model.apply(v, x), variables, x)
    forward = statistics.median(time_calls(fwd, variables, x, repeats=5, slow_s=slow_s)) / b
    out = {"setup": [model_name, s, b, num_classes], "forward_s_per_image": forward,
           "metrics": {}}

    def timed(name, fn, args, forwards, n=b):
        compiled, compile_s = compile_timed(fn, *args)
        times = time_calls(compiled, *args, repeats=repeats, slow_s=slow_s)
        out["metrics"][name] = _entry(times, n, forward, forwards, compile_s)
        logging.info("%s: %.4f s/img = %.1f F (compile %.1f s)", name,
                     out["metrics"][name]["s_per_image"],
                     out["metrics"][name]["ratio_to_forward"], compile_s)
        write_json(os.path.join(workdir, "metrics.json"), out)

    timed("pointing_game", lambda m, z: metrics.pointing_game(z, m, tolerance=15 * s / 224),
          (jnp.asarray(masks), sal), 0)
    for name, fn in (("boxes_iou", lambda: metrics.box_iou(
            np.stack([metrics.boxes_from_saliency(z) for z in sal_np]),
            np.stack([metrics.mask_box(m) for m in masks]))),
            ("ehr", lambda: metrics.effective_heat_ratio(sal_np, masks))):
        out["metrics"][name] = _entry(time_calls(fn, repeats=repeats, slow_s=slow_s), b, forward, 0)
    for steps in curve_steps:
        pps = max(1, -(-s * s // 2 // steps))
        curve = dict(baseline="blur", sigma=10.0 * s / 224, pixels_per_step=pps, fraction=0.5)
        timed(f"insertion_deletion@{steps}", lambda v, x, z, t, c=curve:
              metrics.insertion_deletion(model, v, x, z, t, **c), (variables, x, sal, t),
              2 * (steps + 1))
        if steps != curve_steps[0]:
            continue
        many = jnp.concatenate([sal] * methods)
        timed(f"insertion_deletion@{steps} x {methods} methods", lambda v, x, z, t, c=curve:
              metrics.insertion_deletion(model, v, x, z, t, steps_per_batch=max(1, 16 // methods),
                                         **c), (variables, jnp.concatenate([x] * methods), many,
                                                jnp.tile(t, methods)), 2 * (steps + 1),
              n=b * methods)
    timed("sensitivity_n", lambda v, x, z, t, k: metrics.sensitivity_n(
        model, v, x, z, t, key=k, num_n=num_n, num_masks=num_masks).correlation,
        (variables, x, sal, t, key), num_n * num_masks)
    _randomisation(out, model, variables, x, t, layers, forward, repeats, slow_s)
    write_json(os.path.join(workdir, "metrics.json"), out)
    return out


def _randomisation(out, model, variables, x, t, layers, forward, repeats, slow_s) -> None:
    """Grad-CAM under `layers` cascading re-initialisations in one vmapped call, then Spearman
    and SSIM of each map against the trained one."""
    gradcam = attribution.get("gradcam")
    paths = metrics.model_layer_paths(model)[:layers]
    sets = [v for _, v in metrics.cascading_randomization(variables, jax.random.key(3), paths)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *sets)
    explain = jax.jit(jax.vmap(lambda v, x, t: gradcam(model, v, x, t), in_axes=(0, None, None)))
    base = jax.jit(lambda v, x, t: gradcam(model, v, x, t))
    start = time.perf_counter()
    jax.block_until_ready((explain(stacked, x, t), base(variables, x, t)))
    compile_s = time.perf_counter() - start

    def check():
        ref = base(variables, x, t)
        maps = explain(stacked, x, t)
        rho = [metrics.spearman(ref, m) for m in maps]
        sim = [np.asarray(metrics.ssim(ref, m)) for m in maps]
        return rho, sim

    times = time_calls(check, repeats=repeats, slow_s=slow_s)
    out["metrics"][f"randomisation ({layers} layers, Grad-CAM)"] = _entry(
        times, len(x), forward, 2 * (layers + 1), compile_s)
