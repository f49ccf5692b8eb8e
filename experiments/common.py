"""Flags every experiment script shares, and the process set-up they drive.

Importing this module defines --compilation_cache, --multihost (with
--coordinator_address, --num_processes, --process_id), --keep_freed_memory,
--one_malloc_arena and --cpu_xla_flags; the library itself defines no flags (it takes these
values as arguments: `cxr_jax.runtime.setup`).
"""

from absl import flags, logging

from cxr_jax import runtime

COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", runtime.DEFAULT_CACHE,
    "Directory of JAX's persistent compilation cache, so a second run does not compile again. "
    "Empty string turns it off.")
MULTIHOST = flags.DEFINE_bool(
    "multihost", False,
    "Call jax.distributed.initialize() first (TPU pods, multi-node GPU); each process then reads "
    "its own shard of the data and process 0 writes results.")
COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "",
    "With --multihost where the cluster does not tell JAX (processes started by hand, several "
    "CPU processes on one machine): host:port of process 0.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                     "With --multihost: the number of processes (see above).")
PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                  "With --multihost: this process's index (see above).")
KEEP_FREED_MEMORY = flags.DEFINE_bool(
    "keep_freed_memory", True,
    "Tell glibc's malloc to keep freed memory for reuse instead of returning it to the OS "
    "(see cxr_jax.runtime.keep_freed_memory): XLA:CPU allocates each call's scratch buffers "
    "afresh, and on Linux large fresh buffers cost a page fault per 4 KiB. No effect off "
    "Linux/glibc.")
ONE_MALLOC_ARENA = flags.DEFINE_bool(
    "one_malloc_arena", True,
    "With --keep_freed_memory: one malloc arena for all threads, without which blocks above "
    "64 MiB allocated on XLA's worker threads are still mapped afresh on every call. Calls "
    "run about 10% faster, first calls (compiles) 10-45% slower.")
CPU_XLA_FLAGS = flags.DEFINE_bool(
    "cpu_xla_flags", True,
    "Add cxr_jax.runtime.CPU_XLA_FLAGS to XLA_FLAGS before JAX starts: XLA:CPU's own kernels "
    "instead of its YNNPACK fusions, which ran DenseNet-121's forward about 25% slower on our "
    "2-core CPU. A flag you set in XLA_FLAGS yourself wins. No effect on GPU/TPU programs.")


def setup() -> None:
    """Quiet logs (orbax and grain are chatty at INFO) unless --verbosity is given, then
    `runtime.setup` with the flags' values."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    runtime.setup(compilation_cache=COMPILATION_CACHE.value, multihost=MULTIHOST.value,
                  keep_freed=KEEP_FREED_MEMORY.value, one_arena=ONE_MALLOC_ARENA.value,
                  cpu_xla_flags=CPU_XLA_FLAGS.value,
                  coordinator_address=COORDINATOR.value,
                  num_processes=NUM_PROCESSES.value, process_id=PROCESS_ID.value)
