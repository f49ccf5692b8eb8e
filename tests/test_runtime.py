"""Process set-up helpers (cxr_jax.runtime)."""

import subprocess
import sys

import pytest


_PROBE = r"""
import sys
import numpy as np
from cxr_jax import runtime

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

applied = runtime.keep_freed_memory() if sys.argv[1] == "keep" else False
a = np.ones(200 * 2**20 // 8)          # 200 MiB: above glibc's largest mmap threshold
before_free = rss_mb()
del a
print(applied, before_free - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_keep_freed_memory_keeps_large_blocks_for_reuse():
    """By default glibc unmaps a freed 200 MiB block (its pages must fault in again on the next
    call); after keep_freed_memory() the block stays in the heap for reuse."""
    def released(mode):
        out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0] == "True", float(out[1])

    applied, kept_release = released("keep")
    if not applied:
        pytest.skip("not glibc")
    _, default_release = released("default")
    assert default_release > 150          # unmapped at once
    assert kept_release < 50              # kept
