"""Process set-up for scripts: multi-host JAX, the compilation cache, malloc, XLA:CPU flags,
who writes.

The library takes plain arguments; the experiment scripts turn their flags
(experiments/common.py) into one `setup(...)` call.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

import jax
from absl import logging

DEFAULT_CACHE = os.path.expanduser("~/.cache/cxr_jax/jax")


_allocator = "default"


def allocator_tuned() -> bool:
    """Whether `setup()` applied `keep_freed_memory` in this process."""
    return _allocator != "default"


def allocator_summary() -> str:
    """How `setup()` left malloc, for results files: "heap kept, one arena", "heap kept,
    default arenas" or "default"."""
    return _allocator


def keep_freed_memory(one_arena: bool = True) -> bool:
    """Makes glibc's malloc reuse freed memory rather than unmapping it; returns True if applied.

    XLA:CPU allocates a compiled program's scratch memory on every call, in one block: 590 MB
    for an input gradient of DenseNet-121 at 224 px and batch 8, 65 MB for its forward. By
    default glibc serves such blocks with fresh `mmap`s and unmaps them on free, so every call
    pays a page fault (and the kernel's zeroing) per 4 KiB page it touches. Here glibc never
    maps large blocks separately (M_MMAP_MAX 0) and never trims the heap (M_TRIM_THRESHOLD
    2 GiB), and with `one_arena` all threads share one malloc arena (M_ARENA_MAX 1).

    The last is what makes the first two reach XLA: its calls allocate on worker threads, and
    glibc gives each thread's own arena heaps of at most 64 MiB, so a larger block there is
    mapped afresh whatever M_MMAP_MAX says. Measured on a 2-core CPU (DenseNet-121, batch 8):
    with the heap settings alone a gradient call still took 153,000 page faults, as many as
    with no setting; with one arena, none on most calls, and the call ran about 10% faster.
    The price of one arena: XLA compiles on several threads, which then share its lock, so
    first calls take 10-45% longer (side by side on 2026-12-05, Multi-layer IBA: 16.4 s against
    13.6-14.2 s).
    The persistent compilation cache pays that once; `one_arena=False` keeps the heap
    settings only. Either way the process keeps its peak memory until exit.

    Process-wide, so the library never does this on import; the experiment scripts do it in
    `setup()` (flags --keep_freed_memory, --one_malloc_arena) and your own scripts may call it
    first thing, before JAX starts any thread. The same via the environment:
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_ARENA_MAX=1.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's malloc.h
    applied = bool(mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, 2**31 - 1))
    return applied and (not one_arena or bool(mallopt(m_arena_max, 1)))


# XLA:CPU in jaxlib 0.10 hands some fusions (elementwise, reductions, small matrix products) to
# its YNNPACK library by default. On our 2-core CPU, DenseNet-121's forward and input gradient
# then ran about 25% slower than with XLA's own kernels, and a YNNPACK reduction over IBA's
# noise samples ran 12x slower than XLA's (38 ms against 3 ms). An empty list turns them off.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def xla_flags() -> str:
    """XLA_FLAGS as this process set it, for results files ("" when unset)."""
    return os.environ.get("XLA_FLAGS", "")


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without it: assume not started
        return False


@functools.lru_cache(maxsize=None)
def _xla_knows(flag: str) -> bool:
    """Whether this jaxlib's XLA defines `flag` ("--name=value"): XLA aborts the process on an
    unknown name in XLA_FLAGS, and the YNNPACK flag is experimental (jaxlib 0.10 has it, older
    ones do not). Looks for the name in jaxlib's shared libraries (a few ms)."""
    import glob
    import mmap
    try:
        import jaxlib
    except ImportError:
        return False
    name = flag.lstrip("-").split("=")[0].encode()
    for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*.so")):
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(name) >= 0:
                    return True
        except (OSError, ValueError):
            continue
    return False


def use_cpu_xla_flags(flags: tuple[str, ...] = CPU_XLA_FLAGS) -> bool:
    """Adds `flags` to the XLA_FLAGS environment variable; returns True if JAX will use them.

    XLA reads XLA_FLAGS once, when JAX starts its backends (the first computation or device
    query), so this must run before that; afterwards it changes nothing and returns False.
    A flag whose name XLA_FLAGS already sets is left as the user set it, and one this jaxlib's
    XLA does not define is left out (XLA would abort on it). The flags (`CPU_XLA_FLAGS`)
    concern XLA:CPU only; GPU and TPU programs ignore them.
    """
    if _backends_started():
        return False
    current = xla_flags()
    named = {f.split("=")[0] for f in current.split()}
    add = [f for f in flags if f.split("=")[0] not in named and _xla_knows(f)]
    if add:
        os.environ["XLA_FLAGS"] = " ".join([current, *add]).strip()
    return True


def train_compiler_options() -> dict | None:
    """XLA options for a training step's `jax.jit` on the CPU; None elsewhere.

    A training step's batch norm reduces over batch, height and width, which YNNPACK does
    faster than XLA's own kernels: resnet_small's step (128 px, batch 32) took 65 ms with
    YNNPACK's reductions alone, as with all its fusions, and 73.5 ms with none (medians of 4
    interleaved runs of 20 steps). So a training step on the CPU compiles with YNNPACK's
    reductions on and its other fusions off, whatever XLA_FLAGS says for this option (a jit's
    own options win). None off the CPU, or where this XLA lacks the option.
    """
    if jax.default_backend() != "cpu" or not _xla_knows(CPU_XLA_FLAGS[0]):
        return None
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def setup(*, compilation_cache: str | None = DEFAULT_CACHE, multihost: bool = False,
          keep_freed: bool = True, one_arena: bool = True, cpu_xla_flags: bool = True,
          coordinator_address: str | None = None,
          num_processes: int | None = None, process_id: int | None = None) -> None:
    """Prepares this process for an experiment.

    Args:
      compilation_cache: folder of JAX's persistent compilation cache, so a second run does not
        compile again; None or "" turns it off.
      multihost: call `jax.distributed.initialize()` first (TPU pods, multi-node GPU, several
        CPU processes); each process then reads its own shard of the data and process 0 writes
        results. On CPU the processes' collectives go through gloo.
      keep_freed: apply `keep_freed_memory()` (glibc keeps freed memory for reuse).
      one_arena: with keep_freed, one malloc arena for all threads (faster calls, slower
        compiles; see `keep_freed_memory`).
      cpu_xla_flags: add `CPU_XLA_FLAGS` to XLA_FLAGS (`use_cpu_xla_flags`): XLA:CPU's own
        kernels instead of YNNPACK's.
      coordinator_address, num_processes, process_id: passed to `jax.distributed.initialize`
        where the cluster does not tell JAX itself (TPU VMs and SLURM do; a set of processes
        on one machine or hosts you started by hand do not): "host:port" of process 0, the
        number of processes, and this process's index.
    """
    global _allocator
    if cpu_xla_flags:
        use_cpu_xla_flags()
    if keep_freed and keep_freed_memory(one_arena):
        _allocator = "heap kept, one arena" if one_arena else "heap kept, default arenas"
    if multihost:
        # Cross-process collectives of the CPU backend (no effect on GPU/TPU devices).
        if jax.config.jax_cpu_collectives_implementation is None:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator_address or None,
                                   num_processes=num_processes, process_id=process_id)
    if compilation_cache:
        os.makedirs(compilation_cache, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    logging.info("JAX %s on %d %s device(s), process %d of %d", jax.__version__,
                 jax.device_count(), jax.default_backend(), jax.process_index(),
                 jax.process_count())


def device_summary() -> str:
    """The devices this process computes on, e.g. "8 x cpu" or "1 x NVIDIA H200", for results
    files: times mean little without the machine they were measured on."""
    return f"{jax.device_count()} x {jax.devices()[0].device_kind}"


def is_writer() -> bool:
    """True on the process that writes results (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing to wait for with one
    process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
