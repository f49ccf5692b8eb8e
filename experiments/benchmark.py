r"""Times the forward pass and every attribution method, as ratios to the forward pass (F).

    python -m experiments.benchmark --workdir runs/bench --model densenet121 \
        --image_size 224 --batch_size 8 [--methods gradcam,iba]

Writes `DIR/benchmark.json`:
    {"forward_s_per_image": ..., "forward_compile_s": ..., "device": ..., "methods":
     {name: {"s_per_image", "ratio_to_forward", "compile_s", "repeats", "hparams"}}}
`setup` is [model, image size, batch, classes, keep_freed_memory]; results of another setup are
not mixed in. `--keep_freed_memory` (on by default, see `cxr_jax.runtime.keep_freed_memory`)
makes malloc reuse XLA's per-call scratch memory; `--nokeep_freed_memory` times the default.
Each method is jitted once (compile time = lowering + compilation, measured separately), run once
to warm up, then timed `--repeats` times (the median is reported; the minimum is kept too). The
file is rewritten after every method, and methods already in it are skipped on a rerun unless
`--overwrite`. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from cxr_jax import attribution, models, runtime

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_MODEL = flags.DEFINE_string("model", "densenet121", "Registered model name.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input height and width.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per call.")
_CLASSES = flags.DEFINE_integer("num_classes", 14, "Model outputs.")
_METHODS = flags.DEFINE_list("methods", None, "Methods to time (default: all registered).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per method (fewer for slow ones).")
_SLOW_S = flags.DEFINE_float("slow_s", 30.0, "A method whose warm-up call takes longer than "
                             "this is timed once.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Re-time methods already in the file.")

# Benchmark settings per method: the defaults of METHODS.md, stated so the numbers are readable.
HPARAMS = {
    "integrated_gradients": {"steps": 50},
    "smoothgrad": {"n": 50},
    "iba": {"layer": "denseblock3", "steps": 10, "samples": 10},
    "inverse_iba": {"layer": "denseblock3", "steps": 10, "samples": 10},
}


def _time(fn, *args, repeats: int, slow_s: float):
    """Warm-up then timed calls; returns (list of seconds)."""
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


def _method_kwargs(name, model, variables, x, key):
    hp = dict(HPARAMS.get(name, {}))
    if name in ("iba", "inverse_iba", "regression_iba", "multilayer_iba"):
        layer = hp.get("layer") or "denseblock3"
        if name == "multilayer_iba":
            layers = [s for s in ("denseblock1", "denseblock2", "denseblock3") if s in model.stages]
            hp["stats"] = {l: attribution.iba_stats(model, variables, [x], layer=l)
                           for l in layers}
        else:
            hp["stats"] = attribution.iba_stats(model, variables, [x], layer=layer)
    if name == "regression_iba":
        hp.setdefault("layer", "denseblock3")
    return hp


def run(workdir: str, *, model_name: str, image_size: int, batch_size: int, num_classes: int,
        methods, repeats: int, slow_s: float, overwrite: bool) -> dict:
    """Times the forward pass and `methods`; writes and returns the benchmark dict."""
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
    old = runtime.read_json(path, {})
    setup = [model_name, image_size, batch_size, num_classes, runtime.allocator_tuned()]
    same_setup = old.get("setup") == setup
    result = {
        "setup": setup,
        "keep_freed_memory": runtime.allocator_tuned(),
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "forward_s_per_image": forward,
        "forward_min_s_per_image": min(fwd_times) / batch_size,
        "forward_compile_s": fwd_compile,
        "methods": dict(old.get("methods", {})) if same_setup else {},
    }
    logging.info("forward: %.1f ms per image (compile %.1f s)", forward * 1e3, fwd_compile)
    runtime.write_json(path, result)

    for name in methods or attribution.names():
        if name in result["methods"] and not overwrite:
            logging.info("%s: already timed, skipping (--overwrite to redo)", name)
            continue
        fn = attribution.get(name)
        hp = _method_kwargs(name, model, variables, x, key)

        def call(v, x, t, k, fn=fn, hp=hp):
            return fn(model, v, x, t, key=k, **hp)

        compiled, compile_s = _compile(call, variables, x, targets, key)
        times = _time(compiled, variables, x, targets, key, repeats=repeats, slow_s=slow_s)
        per_image = statistics.median(times) / batch_size
        result["methods"][name] = {
            "s_per_image": per_image,
            "min_s_per_image": min(times) / batch_size,
            "ratio_to_forward": per_image / forward,
            "compile_s": compile_s,
            "repeats": len(times),
            "hparams": {k: v for k, v in hp.items() if k != "stats"},
        }
        logging.info("%s: %.3f s per image = %.1f F (compile %.1f s)", name, per_image,
                     per_image / forward, compile_s)
        runtime.write_json(path, result)
    return result


def main(argv):
    del argv
    # Compile times are part of what is measured: no persistent cache unless asked for.
    if not flags.FLAGS["compilation_cache"].present:
        flags.FLAGS.compilation_cache = ""
    runtime.setup()
    result = run(_WORKDIR.value, model_name=_MODEL.value, image_size=_IMAGE_SIZE.value,
                 batch_size=_BATCH.value, num_classes=_CLASSES.value, methods=_METHODS.value,
                 repeats=_REPEATS.value, slow_s=_SLOW_S.value, overwrite=_OVERWRITE.value)
    rows = [f"{'forward':24s} {result['forward_s_per_image'] * 1e3:9.1f} ms/img"]
    for name, m in sorted(result["methods"].items()):
        rows.append(f"{name:24s} {m['ratio_to_forward']:9.1f} F   compile {m['compile_s']:.1f} s")
    print("\n".join(rows))


if __name__ == "__main__":
    app.run(main)
