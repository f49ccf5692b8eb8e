"""Converting a weights file into a cxr_jax checkpoint folder, and reading one back.

Owns the checkpoint format, a folder holding `variables/` (orbax, numpy arrays) and `model.json`
(arch, num_classes, in_channels, source, input convention, pathologies, operating points), and
`convert`, which ties the other modules together: read the file, normalise its keys, recognise
its architecture, map its weights, gather the metadata and save.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from cxr_jax import models
from cxr_jax.common import files
from cxr_jax.convert.arch import describe_state_dict, infer_arch
from cxr_jax.convert.catalogue import SOURCES, XRV_PATHOLOGIES, known_xrv_weights
from cxr_jax.convert.inference import input_convention
from cxr_jax.convert.keys import torch_to_flax
from cxr_jax.convert.reading import read_state_dict
from cxr_jax.convert.spelling import normalize_keys
from cxr_jax.models import loading
from cxr_jax.models.base import Model


def _json_floats(values) -> list | None:
    if values is None:
        return None
    return [None if (v is None or math.isnan(float(v))) else float(v)
            for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def convert(
    weights: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    arch: str | None = None,
    source: str = "torchvision",
    trust_pickle: bool = False,
    xrv_weights: str | None = None,
    pathologies: Sequence[str] | None = None,
    op_threshs: Sequence[float] | None = None,
    overwrite: bool = False,
) -> tuple[Model, dict]:
    """Converts a PyTorch state_dict file into a cxr_jax checkpoint folder.

    num_classes and in_channels are read from the file (classifier and first convolution).

    Args:
      weights: `.pt`/`.pth` (state_dict), `.safetensors` or `.npz` file.
      out_dir: checkpoint folder to write (`variables/` + `model.json`).
      arch: registered model name; inferred from the file when None. A file of another
        architecture is refused, naming the one it holds.
      source: "torchvision" or "torchxrayvision" (sets the recorded input convention and, for
        TorchXRayVision, pathologies and operating points).
      trust_pickle: allow full unpickling of whole-module files (runs code in the file).
      xrv_weights: TorchXRayVision weights name (e.g. "densenet121-res224-all") giving labels and
        op_threshs; recognised from the released file name when None.
      pathologies: output names, overriding the defaults.
      op_threshs: operating points [K], overriding the file's `op_threshs` and the defaults.
      overwrite: replace an existing checkpoint in `out_dir`.
    Returns:
      (model, variables), as `load(out_dir)` will return them.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    if arch is not None and arch not in models.names():
        raise ValueError(f"Unknown arch {arch!r}. Registered models: {', '.join(models.names())}.")
    path = pathlib.Path(weights)
    out = pathlib.Path(out_dir).absolute()
    if (out / "model.json").exists() and not overwrite:
        raise ValueError(f"{str(out)!r} already holds a checkpoint; pass --overwrite "
                         f"(overwrite=True) to replace it.")

    raw = read_state_dict(path, trust_pickle=trust_pickle)
    state, extras = normalize_keys(raw)
    model = _model_for(state, arch, path)
    variables = torch_to_flax(state, model)
    metadata = _metadata(model, path, source, xrv_weights, extras.get("op_threshs"),
                         pathologies, op_threshs)
    save(out, variables, metadata, overwrite=overwrite)
    return model, variables


def _model_for(state: Mapping[str, Any], arch: str | None, path: pathlib.Path) -> Model:
    """The model a normalised state_dict fills: `arch` (checked against the file) or the one
    recognised in it, with the file's num_classes and in_channels."""
    desc = describe_state_dict(state)
    found = infer_arch(state)
    if arch is None:
        if found is None:
            raise ValueError(f"Could not recognise a registered architecture in {str(path)!r}; "
                             f"pass --arch (one of {', '.join(models.names())}).")
        arch = found
    elif found is not None and found != arch:
        raise ValueError(f"Wrong architecture: {str(path)!r} holds a {found} state_dict, not "
                         f"{arch}. Pass --arch {found} (arch={found!r}).")
    if desc is None:  # no DenseNet/ResNet layout: the mapping lists what is missing/unexpected
        torch_to_flax(state, models.get(arch, num_classes=1))
        raise ValueError(f"Could not read the classifier and first convolution of "
                         f"{str(path)!r} as a {arch}.")
    return models.get(arch, num_classes=int(desc["num_classes"]),
                      in_channels=int(desc["in_channels"]))


def _metadata(model: Model, path: pathlib.Path, source: str, xrv_weights: str | None,
              file_op_threshs: Any, pathologies: Sequence[str] | None,
              op_threshs: Sequence[float] | None) -> dict[str, Any]:
    """The model.json contents for a converted file.

    Output names and operating points come from the caller, else the file (`op_threshs` buffer),
    else the TorchXRayVision catalogue entry; a source of "torchxrayvision" with 18 outputs and
    no entry gets the default pathology names.
    """
    arch = model.name
    xrv = known_xrv_weights(path, xrv_weights) if source == "torchxrayvision" else None
    if xrv is not None and xrv["arch"] != arch:
        raise ValueError(f"TorchXRayVision weights {xrv_weights or path.name!r} are a "
                         f"{xrv['arch']}, but the file is a {arch}.")
    k = model.num_classes
    if op_threshs is None:
        op_threshs = file_op_threshs
        if op_threshs is None and xrv is not None:
            op_threshs = xrv["op_threshs"]
    if pathologies is None:
        if xrv is not None:
            pathologies = xrv["labels"]
        elif source == "torchxrayvision" and k == len(XRV_PATHOLOGIES):
            pathologies = XRV_PATHOLOGIES
        else:
            pathologies = ()
    pathologies = [str(p) for p in pathologies]
    op = _json_floats(op_threshs)
    for name, seq in (("pathologies", pathologies), ("op_threshs", op)):
        if seq and len(seq) != k:
            raise ValueError(f"{name} has {len(seq)} entries but the model has {k} outputs.")
    size = xrv["size"] if xrv is not None else 224
    return {
        "arch": arch,
        "num_classes": k,
        "in_channels": model.in_channels,
        "source": source,
        "weights_file": path.name,
        "input_convention": input_convention(source, model.in_channels, size),
        "pathologies": pathologies,
        "untrained_outputs": [i for i, p in enumerate(pathologies) if p == ""],
        "op_threshs": op,
    }


def save(out_dir: str | os.PathLike, variables: Mapping[str, Any], metadata: Mapping[str, Any],
         *, overwrite: bool = False) -> None:
    """Writes `out_dir/variables` (orbax) and `out_dir/model.json`.

    Args:
      out_dir: folder (created).
      variables: {"params", "batch_stats"}; stored as numpy arrays, so restoring needs no devices.
      metadata: at least "arch", "num_classes", "in_channels"; JSON-serialisable.
    """
    import orbax.checkpoint as ocp

    for key in ("arch", "num_classes", "in_channels"):
        if key not in metadata:
            raise ValueError(f"metadata needs {key!r}.")
    out = pathlib.Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    host = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float32), dict(variables))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out / "variables", host, force=overwrite)
        ckptr.wait_until_finished()
    files.write_text(out / "model.json",
                     json.dumps(dict(metadata), indent=2, allow_nan=False) + "\n")


def load_metadata(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The `model.json` of a converted checkpoint (op_threshs with NaN where none)."""
    return loading.read_model_json(ckpt_dir)


def load(ckpt_dir: str | os.PathLike) -> tuple[Model, dict]:
    """Loads a converted checkpoint as (model, variables); `cxr_jax.models.load` gives its
    metadata too (and loads training workdirs).

    Args:
      ckpt_dir: a folder written by `convert` / `save`.
    Returns:
      (model, variables): `model.apply(variables, x)` gives the logits for images x prepared as
      `load_metadata(ckpt_dir)["input_convention"]` says (see `normalize_input`).
    """
    if not (pathlib.Path(ckpt_dir) / "model.json").is_file():
        loading.read_model_json(ckpt_dir)  # raises, saying what a checkpoint holds
    model, variables, _ = loading.load(ckpt_dir)
    return model, variables
