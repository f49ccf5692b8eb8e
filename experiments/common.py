"""Flags every experiment script shares, and the process set-up they drive.

Importing this module defines --compilation_cache, --multihost and --keep_freed_memory; the
library itself defines no flags (it takes these values as arguments: `cxr_jax.runtime.setup`).
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
KEEP_FREED_MEMORY = flags.DEFINE_bool(
    "keep_freed_memory", True,
    "Tell glibc's malloc to keep freed memory for reuse instead of returning it to the OS "
    "(see cxr_jax.runtime.keep_freed_memory): XLA:CPU allocates each call's scratch buffers "
    "afresh, and on Linux large fresh buffers cost a page fault per 4 KiB. No effect off "
    "Linux/glibc.")


def setup() -> None:
    """Quiet logs (orbax and grain are chatty at INFO) unless --verbosity is given, then
    `runtime.setup` with the flags' values."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    runtime.setup(compilation_cache=COMPILATION_CACHE.value, multihost=MULTIHOST.value,
                  keep_freed=KEEP_FREED_MEMORY.value)
