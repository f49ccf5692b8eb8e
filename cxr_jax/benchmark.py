"""The speed study: the forward pass and every attribution method, as ratios to the forward.

`run` writes `workdir/benchmark.json`:
    {"forward_s_per_image": ..., "forward_compile_s": ..., "device": ..., "methods":
     {name: {"s_per_image", "ratio_to_forward", "forward_s_per_image", "compile_s", "repeats",
             "hparams"}}}
`setup` is [model, image size, batch, classes, malloc setting, XLA_FLAGS]; results of another
setup are not mixed in. Each method is made ready by `cxr_jax.attribution.prepare`
(statistics, where a method needs them, from the timed batch itself), jitted once (compile
time = lowering + compilation, measured separately), run once to warm up, then timed
`repeats` times, each call right after a forward call: the ratio is the median of the pairs'
ratios and the method's `forward_s_per_image` the forward beside it (the machine's speed
drifts; see `time_paired`). The file is rewritten after every method, and methods already in
it are skipped on a rerun unless `overwrite`. Weights are random: speed does not depend on
them. Timings are never part of the test suite.
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

def time_calls(fn, *args, repeats: int, slow_s: float) -> list[float]:
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


def time_paired(fn, args, forward, forward_args, *, repeats: int,
                slow_s: float) -> tuple[list[float], list[float]]:
    """Times `fn(*args)` interleaved with `forward(*forward_args)`, both already compiled.

    Returns (fn seconds, forward seconds), one pair per repeat: each call of `fn` follows a
    forward call, so a ratio taken pair by pair compares them in the same moment. Our 2-core
    machines drift by up to 1.5x within minutes, which a forward timed once at the start turns
    into the method's ratio. A warm-up slower than `slow_s` is the only `fn` timing, paired with
    the mean of one forward before and one after it.
    """
    jax.block_until_ready(forward(*forward_args))
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    warm = time.perf_counter() - t
    if warm > slow_s:
        before = time_calls(forward, *forward_args, repeats=1, slow_s=float("inf"))[0]
        after = time_calls(forward, *forward_args, repeats=1, slow_s=float("inf"))[0]
        return [warm], [(before + after) / 2]
    times, fwd_times = [], []
    for _ in range(repeats):
        fwd_times.append(time_calls(forward, *forward_args, repeats=1, slow_s=float("inf"))[0])
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return times, fwd_times


def compile_timed(fn, *args):
    """jit(fn) lowered and compiled for args: (compiled, seconds it took)."""
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t


def run(workdir: str, *, model_name: str, image_size: int, batch_size: int, num_classes: int,
        methods: Sequence[str] | None, repeats: int, slow_s: float, overwrite: bool) -> dict:
    """Times the forward pass and `methods` (None: all); writes and returns the benchmark dict."""
    names = list(methods or attribution.names())
    for name in names:  # a misspelt name fails now, not after minutes of timing
        attribution.info(name)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "benchmark.json")
    model = models.get(model_name, num_classes=num_classes)
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch_size, image_size, image_size, 1), jnp.float32) * 300.0
    variables = model.init(jax.random.key(1), x)
    targets = jnp.arange(batch_size, dtype=jnp.int32) % num_classes

    fwd, fwd_compile = compile_timed(lambda v, x: model.apply(v, x), variables, x)
    fwd_times = time_calls(fwd, variables, x, repeats=max(repeats, 5), slow_s=slow_s)
    forward = statistics.median(fwd_times) / batch_size
    old = read_json(path, {})
    # The malloc setting and XLA's flags are part of the key: one arena runs calls ~10% faster
    # and compiles slower (see runtime.keep_freed_memory), and XLA:CPU's YNNPACK fusions
    # change most times (runtime.CPU_XLA_FLAGS), so timings under others are not mixed in.
    malloc = runtime.allocator_summary()
    setup = [model_name, image_size, batch_size, num_classes, malloc, runtime.xla_flags()]
    result = {
        "setup": setup,
        "keep_freed_memory": runtime.allocator_tuned(),
        "xla_flags": runtime.xla_flags(),
        "device": runtime.device_summary(),
        "forward_s_per_image": forward,
        "forward_min_s_per_image": min(fwd_times) / batch_size,
        "forward_compile_s": fwd_compile,
        "methods": dict(old.get("methods", {})) if old.get("setup") == setup else {},
    }
    logging.info("forward: %.1f ms per image (compile %.1f s)", forward * 1e3, fwd_compile)
    write_json(path, result)
    cache = attribution.Cache()
    for name in names:
        if name in result["methods"] and not overwrite:
            logging.info("%s: already timed, skipping (--overwrite to redo)", name)
            continue
        # METHODS.md's settings, as the registry holds them (e.g. IG 50 steps).
        ready = attribution.prepare(name, attribution.info(name).settings(), model, variables,
                                    x, cache=cache)
        result["methods"][name] = time_method(ready, model, variables, x, targets, key,
                                              forward=forward, repeats=repeats, slow_s=slow_s,
                                              forward_fn=fwd)
        write_json(path, result)
    return result


def time_method(ready: attribution.Prepared, model, variables, x, targets, key, *,
                forward: float, repeats: int, slow_s: float, forward_fn=None) -> dict:
    """Compile time and seconds per image of one prepared method on the batch x.

    With `forward_fn` (the compiled forward of (variables, x)), each timed call follows a
    forward call and `ratio_to_forward` is the median of the pairs' ratios (`time_paired`);
    `forward_s_per_image` is then the median forward of those pairs. Without it, the ratio is
    against `forward`.
    """
    compiled, compile_s = compile_timed(lambda v, x, t, k: ready(model, v, x, t, key=k),
                                        variables, x, targets, key)
    args = (variables, x, targets, key)
    if forward_fn is None:
        times = time_calls(compiled, *args, repeats=repeats, slow_s=slow_s)
        ratios = [t / (forward * len(x)) for t in times]
    else:
        times, fwd_times = time_paired(compiled, args, forward_fn, (variables, x),
                                       repeats=repeats, slow_s=slow_s)
        ratios = [t / f for t, f in zip(times, fwd_times)]
        forward = statistics.median(fwd_times) / len(x)
    per_image = statistics.median(times) / len(x)
    ratio = statistics.median(ratios)
    logging.info("%s: %.3f s per image = %.1f F (forward %.1f ms beside it; compile %.1f s)",
                 ready.method, per_image, ratio, forward * 1e3, compile_s)
    return {"s_per_image": per_image, "min_s_per_image": min(times) / len(x),
            "ratio_to_forward": ratio, "forward_s_per_image": forward, "compile_s": compile_s,
            "repeats": len(times), "hparams": ready.settings()}
