"""Process set-up helpers (cxr_jax.runtime)."""

import subprocess
import sys

import pytest


_RSS = r"""
import sys, threading
import numpy as np
from cxr_jax import runtime

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
"""

_PROBE = _RSS + r"""
applied = runtime.keep_freed_memory() if sys.argv[1] == "keep" else False
a = np.ones(200 * 2**20 // 8)          # 200 MiB: above glibc's largest mmap threshold
before_free = rss_mb()
del a
print(applied, before_free - rss_mb())
"""


def _released(probe: str, mode: str) -> tuple[bool, float]:
    """Runs `probe` in a fresh process: (settings applied, MiB returned to the OS on free)."""
    out = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_keep_freed_memory_keeps_large_blocks_for_reuse():
    """By default glibc unmaps a freed 200 MiB block (its pages must fault in again on the next
    call); after keep_freed_memory() the block stays in the heap for reuse."""
    applied, kept_release = _released(_PROBE, "keep")
    if not applied:
        pytest.skip("not glibc")
    _, default_release = _released(_PROBE, "default")
    assert default_release > 150          # unmapped at once
    assert kept_release < 50              # kept


_FLAGS_PROBE = r"""
import os, sys
import jax
from cxr_jax import runtime
before = runtime.use_cpu_xla_flags(FLAGS)
n = jax.device_count()
after = runtime.use_cpu_xla_flags(("--xla_force_host_platform_device_count=5",))
print(before, after, n, repr(os.environ["XLA_FLAGS"]))
"""


def _flags_probe(flags: str, xla_flags: str) -> list[str]:
    import os
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", _FLAGS_PROBE.replace("FLAGS)", flags + ")", 1)],
                          capture_output=True, text=True, check=True, env=env).stdout.split(
                              maxsplit=3)


def test_cpu_xla_flags_join_xla_flags_only_before_jax_starts():
    """Added before the backends start, so XLA reads them (3 devices); refused after. A flag
    this XLA does not define is left out (XLA would abort on it), and the user's own setting of
    a flag wins."""
    out = _flags_probe('("--xla_cpu_no_such_flag=1", "--xla_force_host_platform_device_count=3")',
                       "")
    assert out[:3] == ["True", "False", "3"]
    assert eval(out[3]) == "--xla_force_host_platform_device_count=3"
    out = _flags_probe('runtime.CPU_XLA_FLAGS + ("--xla_backend_optimization_level=2",)',
                       "--xla_backend_optimization_level=0")
    assert out[:3] == ["True", "False", "1"]
    assert eval(out[3]) == ("--xla_backend_optimization_level=0 "
                            "--xla_cpu_experimental_ynn_fusion_type=")


def test_scaling_case_runs_sharded_and_tables_the_speed_up(tmp_path):
    from cxr_jax import benchmark_scaling as bs
    assert bs.device_counts(8) == [1, 2, 4, 8] and bs.device_counts(6) == [1, 2, 4, 6]
    assert bs.device_counts(1) == [1]
    r = bs.scaling_case(str(tmp_path), model_name="resnet_tiny", image_size=32,
                        per_device_batch=2, num_classes=3, devices=2, methods=["gradcam"],
                        repeats=1)
    assert [(row["devices"], row["batch"]) for row in r["rows"]] == [(1, 2), (2, 4)]
    assert all(row["train"] > 0 and row["gradcam"] > 0 for row in r["rows"])
    table = (tmp_path / "scaling.md").read_text()
    assert "not a speed-up" in table and "| 2 | 4 |" in table
    fake = {**r, "rows": [{"devices": 1, "batch": 2, "train": 10.0, "gradcam": 4.0},
                          {"devices": 2, "batch": 4, "train": 20.0, "gradcam": 6.0}]}
    assert "| 2 | 4 | 20.0 img/s (2.00x) | 6.0 img/s (1.50x) |" in bs.scaling_table(fake)


def test_benchmark_names_an_unknown_method_before_timing_anything(tmp_path):
    from cxr_jax import benchmark
    with pytest.raises(ValueError, match="'grad_cam'.*gradcam"):
        benchmark.run(str(tmp_path), model_name="densenet121", image_size=224, batch_size=8,
                      num_classes=14, methods=["gradient", "grad_cam"], repeats=1, slow_s=1.0,
                      overwrite=False)
    assert not (tmp_path / "benchmark.json").exists()


_THREAD_PROBE = _RSS + r"""
applied = runtime.keep_freed_memory(one_arena=sys.argv[1] == "one")
out = []

def work():  # a worker thread, as XLA allocates a call's scratch on one
    a = np.ones(200 * 2**20 // 8)       # 200 MiB: above a thread arena's 64 MiB heaps
    before_free = rss_mb()
    del a
    out.append(before_free - rss_mb())

t = threading.Thread(target=work)
t.start()
t.join()
print(applied, out[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_only_one_arena_keeps_a_worker_threads_large_blocks():
    """glibc maps a block above 64 MiB afresh in a thread's own arena whatever M_MMAP_MAX
    says; with one arena the worker allocates from the main heap, which keeps it."""
    applied, one_release = _released(_THREAD_PROBE, "one")
    if not applied:
        pytest.skip("not glibc")
    _, heap_only_release = _released(_THREAD_PROBE, "heap")
    assert heap_only_release > 150       # unmapped at once despite the heap settings
    assert one_release < 50              # kept
