"""Process set-up shared by the experiment scripts: multi-host, compilation cache, logging."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from absl import flags, logging

_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.expanduser("~/.cache/cxr_jax/jax"),
    "Directory of JAX's persistent compilation cache, so a second run does not compile again. "
    "Empty string turns it off.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False,
    "Call jax.distributed.initialize() first (TPU pods, multi-node GPU); each process then reads "
    "its own shard of the data and process 0 writes results.")


def setup() -> None:
    """Initialises multi-host JAX (behind --multihost) and the persistent compilation cache."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and grain are chatty at INFO
    if _MULTIHOST.value:
        jax.distributed.initialize()
    if _CACHE.value:
        os.makedirs(_CACHE.value, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", _CACHE.value)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    logging.info("JAX %s on %d %s device(s), process %d of %d", jax.__version__,
                 jax.device_count(), jax.default_backend(), jax.process_index(),
                 jax.process_count())


def is_writer() -> bool:
    """True on the process that writes results (process 0)."""
    return jax.process_index() == 0


def write_json(path: str, obj: Any) -> None:
    """Writes JSON atomically (temp file + rename), so a killed run never leaves half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=float)
    os.replace(tmp, path)


def read_json(path: str, default: Any = None) -> Any:
    """Reads JSON written by `write_json`, or `default` when absent."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)
