"""How throughput scales with devices: images/s of a training step and of attribution methods
on 1, 2, 4, ... N devices, the batch growing with the devices (a fixed batch per device).

`scaling_case` writes `workdir/scaling.json` ({"setup", "device", "rows": [{"devices": d,
"batch": B, name: images/s, ...}]}) and `workdir/scaling.md` (the table, images/s and the
speed-up over one device). Each step is jitted once per device count (compile time kept apart),
run once to warm up and timed `repeats` times (the median). The batch is sharded over a
one-axis mesh of the first d devices, parameters replicated: the library's path on a GPU node or
a TPU host. On simulated CPU devices (`--xla_force_host_platform_device_count`) the devices
share the same cores, so the table there checks that every step runs sharded, not a speed-up.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Sequence

import jax
import numpy as np
import optax

from cxr_jax import attribution, models, runtime
from cxr_jax.common import sharding
from cxr_jax.common.files import write_json, write_text
from cxr_jax.training.steps import create_state, make_train_step


def device_counts(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    if n < 1:
        raise ValueError(f"devices must be >= 1, got {n}.")
    out, d = [], 1
    while d < n:
        out.append(d)
        d *= 2
    return out + [n]


def _time(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile + first call seconds, median seconds of `repeats` further calls)."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def scaling_case(workdir: str, *, model_name: str, image_size: int, per_device_batch: int,
                 num_classes: int, devices: int, methods: Sequence[str], repeats: int,
                 fast: bool = False) -> dict:
    """Images/s of training and `methods` on 1..`devices` devices; writes the JSON and table.

    Args:
      workdir: output folder.
      model_name, image_size, num_classes: the model (random weights: speed does not depend on
        them) and its input.
      per_device_batch: images per device; the batch on d devices is d times this.
      devices: the largest device count (at most `jax.device_count()`).
      methods: registered attribution methods (their METHODS.md settings, or the fast ones).
      repeats: timed calls per step.
      fast: the registry's cheaper settings (e.g. IG 16 steps) instead of METHODS.md's.
    """
    if devices > jax.device_count():
        raise ValueError(f"--devices {devices} but only {jax.device_count()} devices are "
                         f"visible; on a CPU simulate more with XLA_FLAGS="
                         f"--xla_force_host_platform_device_count={devices}.")
    os.makedirs(workdir, exist_ok=True)
    model = models.get(model_name, num_classes=num_classes)
    tx = optax.sgd(1e-3)
    rows = []
    for d in device_counts(devices):
        mesh = sharding.make_mesh(jax.devices()[:d])
        b = per_device_batch * d
        key = jax.random.key(d)
        x_np = np.asarray(jax.random.normal(key, (b, image_size, image_size, 1)) * 300.0)
        y_np = np.asarray(jax.random.bernoulli(key, 0.3, (b, num_classes)), np.float32)
        t_np = np.arange(b, dtype=np.int32) % num_classes
        x, y, t = sharding.shard_batch((x_np, y_np, t_np), mesh)
        state = sharding.replicate(create_state(model, tx, image_size=image_size), mesh)
        row = {"devices": d, "batch": b, "compile_s": {}}
        step = jax.jit(make_train_step(model, tx, loss="bce"))
        first, s = _time(lambda: step(state, x, y)[1]["loss"], repeats=repeats)
        row["train"], row["compile_s"]["train"] = b / s, first - s
        variables = state.variables
        for name in methods:
            settings = attribution.info(name).settings(fast=fast)
            ready = attribution.prepare(name, settings, model, variables, x)
            fn = jax.jit(lambda v, x, t, k, ready=ready: ready(model, v, x, t, key=k))
            first, s = _time(fn, variables, x, t, key, repeats=repeats)
            row[name], row["compile_s"][name] = b / s, first - s
        rows.append(row)
        print(f"{d} device(s), batch {b}: " + ", ".join(
            f"{k} {row[k]:.1f} img/s" for k in ["train", *methods]), flush=True)
    result = {"setup": [model_name, image_size, per_device_batch, num_classes, bool(fast)],
              "device": runtime.device_summary(),
              "simulated_cpu_devices": jax.default_backend() == "cpu" and jax.device_count() > 1,
              "methods": list(methods), "rows": rows}
    write_json(os.path.join(workdir, "scaling.json"), result)
    write_text(os.path.join(workdir, "scaling.md"), scaling_table(result))
    return result


def scaling_table(result: dict) -> str:
    """Markdown: images/s per step and device count, with the speed-up over one device."""
    names = ["train", *result["methods"]]
    base = result["rows"][0]
    lines = [f"{result['setup'][0]} at {result['setup'][1]} px, {result['setup'][2]} images per "
             f"device, {result['device']}"]
    if result["simulated_cpu_devices"]:
        lines.append("Simulated CPU devices share the same cores: this checks the sharded "
                     "path runs; it is not a speed-up.")
    lines += ["", "| devices | batch | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for row in result["rows"]:
        cells = [f"{row[n]:.1f} img/s ({row[n] / base[n]:.2f}x)" for n in names]
        lines.append(f"| {row['devices']} | {row['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
