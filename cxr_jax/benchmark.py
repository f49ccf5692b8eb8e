"""The speed study: the forward pass and every attribution method, as ratios to the forward.

`run` writes `workdir/benchmark.json`:
    {"forward_s_per_image": ..., "forward_compile_s": ..., "device": ..., "methods":
     {name: {"s_per_image", "ratio_to_forward", "compile_s", "repeats", "hparams"}}}
`setup` is [model, image size, batch, classes, keep_freed_memory]; results of another setup are
not mixed in. Each method is made ready by `cxr_jax.attribution.prepare` (statistics, where a
method needs them, from the timed batch itself), jitted once (compile time = lowering +
compilation, measured separately), run once to warm up, then timed `repeats` times (the median
is reported; the minimum is kept too). The file is rewritten after every method, and methods
already in it are skipped on a rerun unless `overwrite`. Weights are random: speed does not
depend on them. Timings are never part of the test suite.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Sequence

import jax
import jax.numpy as jnp
from absl import logging

from cxr_jax import attribution, models, runtime
from cxr_jax.common.files import read_json, write_json

def _time(fn, *args, repeats: int, slow_s: float) -> list[float]:
    """Warm-up then timed calls; returns the seconds of each (just the warm-up if it was slower
    than `slow_s`)."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    warm = time.perf_counter() - t
    if warm > slow_s:
        return [warm]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return times


def _compile(fn, *args):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t


def run(workdir: str, *, model_name: str, image_size: int, batch_size: int, num_classes: int,
        methods: Sequence[str] | None, repeats: int, slow_s: float, overwrite: bool) -> dict:
    """Times the forward pass and `methods` (None: all); writes and returns the benchmark dict."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "benchmark.json")
    model = models.get(model_name, num_classes=num_classes)
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch_size, image_size, image_size, 1), jnp.float32) * 300.0
    variables = model.init(jax.random.key(1), x)
    targets = jnp.arange(batch_size, dtype=jnp.int32) % num_classes

    fwd, fwd_compile = _compile(lambda v, x: model.apply(v, x), variables, x)
    fwd_times = _time(fwd, variables, x, repeats=max(repeats, 5), slow_s=slow_s)
    forward = statistics.median(fwd_times) / batch_size
    old = read_json(path, {})
    setup = [model_name, image_size, batch_size, num_classes, runtime.allocator_tuned()]
    result = {
        "setup": setup,
        "keep_freed_memory": runtime.allocator_tuned(),
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "forward_s_per_image": forward,
        "forward_min_s_per_image": min(fwd_times) / batch_size,
        "forward_compile_s": fwd_compile,
        "methods": dict(old.get("methods", {})) if old.get("setup") == setup else {},
    }
    logging.info("forward: %.1f ms per image (compile %.1f s)", forward * 1e3, fwd_compile)
    write_json(path, result)
    cache = attribution.Cache()
    for name in methods or attribution.names():
        if name in result["methods"] and not overwrite:
            logging.info("%s: already timed, skipping (--overwrite to redo)", name)
            continue
        # METHODS.md's settings, as the registry holds them (e.g. IG 50 steps).
        ready = attribution.prepare(name, attribution.info(name).settings(), model, variables,
                                    x, cache=cache)
        result["methods"][name] = time_method(ready, model, variables, x, targets, key,
                                              forward=forward, repeats=repeats, slow_s=slow_s)
        write_json(path, result)
    return result


def time_method(ready: attribution.Prepared, model, variables, x, targets, key, *,
                forward: float, repeats: int, slow_s: float) -> dict:
    """Compile time and seconds per image of one prepared method on the batch x."""
    compiled, compile_s = _compile(lambda v, x, t, k: ready(model, v, x, t, key=k),
                                   variables, x, targets, key)
    times = _time(compiled, variables, x, targets, key, repeats=repeats, slow_s=slow_s)
    per_image = statistics.median(times) / len(x)
    logging.info("%s: %.3f s per image = %.1f F (compile %.1f s)", ready.method, per_image,
                 per_image / forward, compile_s)
    return {"s_per_image": per_image, "min_s_per_image": min(times) / len(x),
            "ratio_to_forward": per_image / forward, "compile_s": compile_s,
            "repeats": len(times), "hparams": ready.settings()}
