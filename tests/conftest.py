"""Test set-up: 8 fake CPU devices so sharded code paths run on a laptop, XLA's backend
optimisations off, and one persistent compilation cache for the session (a fresh temporary
folder), so a program that several tests compile (the tiny models' training steps, the methods)
is compiled once and loaded after.

The tests run tiny models on small images, so compiling costs more than running: with
`--xla_backend_optimization_level=0` the GAN study's end-to-end test took 50 s instead of 66 s
(its compile time 24 s instead of 39 s). The flag changes how XLA generates code for the CPU,
not what a program computes. Set XLA_FLAGS yourself to run the tests with other flags."""
import atexit
import os
import shutil
import tempfile

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = TEST_XLA_FLAGS
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] = (os.environ["XLA_FLAGS"] + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="cxr_jax_test_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
