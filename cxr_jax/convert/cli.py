"""The `python -m cxr_jax.convert` command line, on absl flags.

Owns the flags and `main`. The flags live on a private `flags.FlagValues` that `_flag_values`
builds afresh for each call, never on the global `flags.FLAGS`, so importing cxr_jax defines no
flags and `main` can be called more than once in a process (as the tests do).
"""

from __future__ import annotations

import sys
from typing import Sequence

import jax
import numpy as np
from absl import flags

from cxr_jax import models
from cxr_jax.convert.catalogue import SOURCES, XRV_WEIGHTS
from cxr_jax.convert.checkpoint import convert

_PROG = "python -m cxr_jax.convert"
_USAGE = (f"usage: {_PROG} --weights FILE --out DIR [--source {{{','.join(SOURCES)}}}] "
          f"[--arch NAME] [--xrv_weights NAME] [--pathologies A,B,...] [--trust_pickle] "
          f"[--overwrite]\n\nConvert a torchvision / TorchXRayVision state_dict into a cxr_jax "
          f"checkpoint folder.")
_REQUIRED = ("weights", "out")


def _flag_values() -> flags.FlagValues:
    """A new FlagValues holding the converter's flags (and `--help`)."""
    fv = flags.FlagValues()
    flags.DEFINE_enum("source", "torchvision", SOURCES, "where the weights come from",
                      flag_values=fv)
    flags.DEFINE_string("arch", None, f"one of {', '.join(models.names())}; inferred from the "
                        f"file if omitted", flag_values=fv)
    flags.DEFINE_string("weights", None, "(required) .pt/.pth state_dict, .safetensors or .npz",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "(required) checkpoint folder to write", flag_values=fv)
    flags.DEFINE_bool("trust_pickle", False, "allow unpickling whole-module files (runs code "
                      "from the file)", flag_values=fv)
    flags.DEFINE_enum("xrv_weights", None, sorted(XRV_WEIGHTS), "TorchXRayVision weights name "
                      "(labels, op_threshs, input size)", flag_values=fv)
    flags.DEFINE_string("pathologies", None, "comma-separated output names", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace an existing checkpoint in --out",
                      flag_values=fv)
    flags.DEFINE_bool("help", False, "show this help and exit", short_name="h", flag_values=fv)
    return fv


def _parse(argv: Sequence[str]) -> flags.FlagValues:
    """Parses `argv` (no program name) into a new FlagValues.

    Raises:
      flags.Error: an unknown flag, a bad or missing value, a positional argument, or a missing
        required flag (unless --help is given).
    """
    fv = _flag_values()
    rest = fv([_PROG, *argv])[1:]
    if rest:
        raise flags.Error(f"unrecognized arguments: {' '.join(rest)}")
    missing = [f"--{name}" for name in _REQUIRED if fv[name].value is None]
    if missing and not fv.help:
        raise flags.Error(f"the following flags are required: {', '.join(missing)}")
    return fv


def main(argv: Sequence[str] | None = None) -> int:
    """Converts the weights the flags name; returns the exit status.

    Args:
      argv: the arguments after the program name; `sys.argv[1:]` when None. String and enum
        flags take `--flag value` or `--flag=value`.
    Returns:
      0 after writing the checkpoint (or printing --help), 2 on bad flags or when the conversion
      fails (the reason is printed to stderr as `error: ...`).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        fv = _parse(argv)
    except flags.Error as e:
        print(f"{_USAGE.splitlines()[0]}\nerror: {e}", file=sys.stderr)
        return 2
    if fv.help:
        print(f"{_USAGE}\n\n{fv.get_help(include_special_flags=False).lstrip()}")
        return 0
    try:
        model, variables = convert(
            fv.weights, fv.out, arch=fv.arch, source=fv.source, trust_pickle=fv.trust_pickle,
            xrv_weights=fv.xrv_weights, overwrite=fv.overwrite,
            pathologies=None if fv.pathologies is None else fv.pathologies.split(","))
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(variables["params"]))
    print(f"wrote {fv.out}: {model.name}, {model.num_classes} outputs, {model.in_channels} input "
          f"channel(s), {n:,} parameters")
    return 0
