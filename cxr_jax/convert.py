"""Import PyTorch weights (torchvision, TorchXRayVision) as cxr_jax checkpoints.

    python -m cxr_jax.convert --source torchxrayvision --arch densenet121 \\
        --weights densenet121-all.pt --out xrv_dir
    model, variables = cxr_jax.convert.load("xrv_dir")

The cxr_jax models nest their variables exactly as torchvision names the modules, so converting
is a renaming plus two transposes:

    torch key                              cxr_jax variables
    <module>.weight  (conv, [O, I, kh, kw]) params[<module path>]["kernel"]  [kh, kw, I, O]
    <module>.weight  (linear, [out, in])    params[<module path>]["kernel"]  [in, out]
    <module>.bias                          params[<module path>]["bias"]
    <module>.weight  (batch norm, [C])     params[<module path>]["scale"]
    <module>.running_mean / running_var    batch_stats[<module path>]["mean" / "var"]
    <module>.num_batches_tracked           dropped (only used by torch's momentum=None mode)

where `<module path>` splits the torch module name at its dots (`layer1.0.downsample.0` ->
("layer1", "0", "downsample", "0")). Images are NHWC here, NCHW in torch.

Key spellings other tools write are accepted: a common `module.` (DataParallel), `model.`
(TorchXRayVision's ResNet wrapper) or `_orig_mod.` (torch.compile) prefix; the legacy
`denselayerN.norm.1` spelling of torchvision's published DenseNet weights; checkpoints that wrap
the state_dict under "state_dict" / "model_state_dict" / "model". TorchXRayVision's `op_threshs`
buffer becomes metadata.

Files are read without running pickled code: `.safetensors` (no torch needed), `.npz`
(no pickles allowed), or `.pt`/`.pth` through `torch.load(weights_only=True)`. A whole pickled
module (TorchXRayVision's published `.pt` files are) is refused with the one line that re-saves it
as a state_dict, unless the caller says it trusts the file (`--trust_pickle`). torch is imported
only inside the function that reads `.pt` files.

A checkpoint is a folder: `variables/` (orbax) and `model.json` (arch, num_classes, in_channels,
source, input convention, pathologies, operating-point thresholds).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import pickle
import re
import sys
import types
import warnings
import zipfile
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import models
from cxr_jax.models.base import Model

SOURCES = ("torchvision", "torchxrayvision")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# TorchXRayVision's default output order (`xrv.datasets.default_pathologies`).
XRV_PATHOLOGIES = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
    "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass",
    "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)

_nan = float("nan")


def _labels(present: str) -> tuple[str, ...]:
    """The 18 default pathologies with the outputs a model was not trained on blanked ("")."""
    keep = set(present.split("|"))
    return tuple(p if p in keep else "" for p in XRV_PATHOLOGIES)


# Published TorchXRayVision weights: output labels ("" = never trained, the output is noise),
# operating-point thresholds (NaN = none), native input size and the released file name. Values
# from torchxrayvision/models.py (`model_urls`).
XRV_WEIGHTS: dict[str, dict[str, Any]] = {
    "densenet121-res224-all": dict(
        arch="densenet121", size=224, labels=XRV_PATHOLOGIES,
        file="nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15"
             "-seed0-best.pt",
        op_threshs=(0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074,
                    0.0022490358, 0.010060724, 0.103246614, 0.056810737, 0.026791653,
                    0.050318155, 0.023985857, 0.01939503, 0.042889766, 0.053369623,
                    0.035975814, 0.20204692, 0.05015312)),
    "densenet121-res224-nih": dict(
        arch="densenet121", size=224, labels=XRV_PATHOLOGIES[:14] + ("",) * 4,
        file="nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        op_threshs=(0.039117552, 0.0034529066, 0.11396341, 0.0057298196, 0.00045666535,
                    0.0018880932, 0.012037827, 0.038744126, 0.0037213727, 0.014730946,
                    0.016149804, 0.054241467, 0.037198864, 0.0004403434, _nan, _nan, _nan, _nan)),
    "densenet121-res224-pc": dict(
        arch="densenet121", size=224, labels=XRV_PATHOLOGIES[:14] + ("", "Fracture", "", ""),
        file="pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        op_threshs=(0.031012505, 0.013347598, 0.081435576, 0.001262615, 0.002587246,
                    0.0035944257, 0.0023071, 0.055412333, 0.044385884, 0.042766232, 0.043258056,
                    0.037629247, 0.005658899, 0.0091741895, _nan, 0.026507627, _nan, _nan)),
    "densenet121-res224-chex": dict(
        arch="densenet121", size=224,
        labels=_labels("Atelectasis|Consolidation|Pneumothorax|Edema|Effusion|Pneumonia|"
                       "Cardiomegaly|Lung Lesion|Fracture|Lung Opacity|Enlarged Cardiomediastinum"),
        file="chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        op_threshs=(0.1988969, 0.05710573, _nan, 0.0531293, 0.1435217, _nan, _nan, 0.27212676,
                    0.07749717, _nan, 0.19712369, _nan, _nan, _nan, 0.09932402, 0.09273402,
                    0.3270967, 0.10888247)),
    "densenet121-res224-rsna": dict(
        arch="densenet121", size=224, labels=_labels("Pneumonia|Lung Opacity"),
        file="kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        op_threshs=(_nan,) * 8 + (0.13486601,) + (_nan,) * 7 + (0.13511065, _nan)),
    "densenet121-res224-mimic_nb": dict(
        arch="densenet121", size=224,
        labels=_labels("Atelectasis|Consolidation|Pneumothorax|Edema|Effusion|Pneumonia|"
                       "Cardiomegaly|Lung Lesion|Fracture|Lung Opacity|Enlarged Cardiomediastinum"),
        file="mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        op_threshs=(0.08558747, 0.011884617, _nan, 0.0040595434, 0.010733786, _nan, _nan,
                    0.118761964, 0.022924708, _nan, 0.06358637, _nan, _nan, _nan, 0.022143636,
                    0.017476924, 0.1258702, 0.014020768)),
    "densenet121-res224-mimic_ch": dict(
        arch="densenet121", size=224,
        labels=_labels("Atelectasis|Consolidation|Pneumothorax|Edema|Effusion|Pneumonia|"
                       "Cardiomegaly|Lung Lesion|Fracture|Lung Opacity|Enlarged Cardiomediastinum"),
        file="mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        op_threshs=(0.09121389, 0.010573786, _nan, 0.005023008, 0.003698257, _nan, _nan,
                    0.08001232, 0.037242252, _nan, 0.05006329, _nan, _nan, _nan, 0.019866971,
                    0.03823637, 0.11303808, 0.0069147074)),
    "resnet50-res512-all": dict(
        arch="resnet50", size=512, labels=XRV_PATHOLOGIES,
        file="pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
        op_threshs=(0.51570356, 0.50444704, 0.53787947, 0.50723547, 0.5025118, 0.5035252,
                    0.5038076, 0.51862943, 0.5078151, 0.50724894, 0.5056339, 0.510706, 0.5053923,
                    0.5020846, _nan, 0.5080557, 0.5138526, _nan)),
}

_RESAVE_HINT = (
    "Re-save it as a plain state_dict in the environment that made it:\n"
    "    import torch; model = torch.load(FILE, weights_only=False)  # the file you trust\n"
    "    torch.save(model.state_dict(), 'x.pt')\n"
    "and convert 'x.pt'; or pass --trust_pickle (trust_pickle=True) if you trust this file: "
    "unpickling can run arbitrary code."
)


# ============================================================================ reading files
def _sniff(path: pathlib.Path) -> str | None:
    """The container format of a weights file from its first bytes, or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            if any(n.endswith(".npy") for n in names) and not any(
                    n.endswith("data.pkl") for n in names):
                return "npz"
            if any(n.endswith("data.pkl") for n in names):
                return "torch"
        return None
    if head[:1] == b"\x80":  # a pickle protocol opcode: torch's legacy (pre-1.6) format
        return "torch"
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if head[8:9] == b"{" and 0 < n < path.stat().st_size:
            return "safetensors"
    return None


def read_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False
                    ) -> dict[str, np.ndarray]:
    """Reads a state_dict from `.safetensors`, `.npz` or a torch `.pt`/`.pth` file.

    Args:
      path: the file.
      trust_pickle: allow full unpickling (runs code stored in the file) when a safe
        `weights_only` load fails, e.g. for whole pickled modules. Classes whose module is not
        importable (TorchXRayVision's, if it is not installed) are stood in for by inert stubs.
    Returns:
      {torch key: numpy array}; floating tensors as float32, as the file names them.
    Raises:
      ValueError: the file is missing, is not a checkpoint, or needs unpickling and
        `trust_pickle` is False.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"Weights file {str(path)!r} does not exist.")
    kind = _sniff(path)
    if kind is None:
        raise ValueError(
            f"{str(path)!r} is not a checkpoint: expected a torch .pt/.pth file (zip or "
            f"legacy pickle), a .safetensors file or a .npz archive.")
    if kind == "safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as e:  # pragma: no cover - safetensors ships with the torch extra
            raise ImportError("Reading .safetensors needs the `safetensors` package: "
                              "pip install 'cxr_jax[torch]'.") from e
        try:
            raw = load_file(str(path))
        except Exception as e:
            raise ValueError(f"{str(path)!r} is not a readable safetensors checkpoint ({e}). "
                             f"bfloat16 tensors cannot be read without torch: re-save them as "
                             f"float32.") from e
        return _as_numpy_state_dict(raw, path)
    if kind == "npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        except ValueError as e:
            raise ValueError(f"{str(path)!r}: .npz archives holding pickled objects are not "
                             f"read; store plain arrays.") from e
        return _as_numpy_state_dict(raw, path)
    return _as_numpy_state_dict(_read_torch(path, trust_pickle), path)


def _read_torch(path: pathlib.Path, trust_pickle: bool) -> Any:
    """Loads a torch file: weights_only first; full unpickling only when trusted."""
    try:
        import torch  # lazy: torch is an optional extra
    except ImportError as e:
        raise ImportError(
            f"Reading {path.name!r} needs PyTorch: pip install 'cxr_jax[torch]' (or convert the "
            f"file to .safetensors where torch is installed).") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if not trust_pickle:
            if found is None:
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                detail = next((ln for ln in lines if "Unsupported" in ln), (lines or [""])[0])
                raise ValueError(f"{str(path)!r} is not a readable torch checkpoint (a safe "
                                 f"weights_only load failed: {detail})") from None
            raise ValueError(
                f"{str(path)!r} holds pickled Python objects (here {found.group(1)}, e.g. a whole "
                f"nn.Module), not just tensors, and loading it would run code stored in the "
                f"file. {_RESAVE_HINT}") from None
    except Exception as e:  # truncated zips, foreign zips, corrupt pickles
        raise ValueError(f"{str(path)!r} is not a readable torch checkpoint: {e}") from e
    try:
        with warnings.catch_warnings():  # stubs have no source for torch to compare with
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            return torch.load(path, map_location="cpu", weights_only=False,
                              pickle_module=_lenient_pickle_module())
    except Exception as e:
        raise ValueError(f"{str(path)!r} could not be unpickled even with trust_pickle: {e}") from e


class _Stub:
    """Stands in for a pickled class whose module cannot be imported; keeps only its state."""

    def __init__(self, *args, **kwargs):
        del args, kwargs

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) pickles
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _lenient_pickle_module() -> types.ModuleType:
    """A `pickle` look-alike whose Unpickler stubs out classes it cannot import."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                return type(name, (_Stub,), {"_origin": f"{module}.{name}"})

    mod = types.ModuleType("cxr_jax_lenient_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    mod.loads = pickle.loads
    mod.dump, mod.dumps = pickle.dump, pickle.dumps
    mod.UnpicklingError = pickle.UnpicklingError
    return mod


def _module_state(obj: Any, prefix: str = "", out: dict | None = None) -> dict:
    """state_dict of a (possibly stubbed) nn.Module, read from its `__dict__` as torch does."""
    out = {} if out is None else out
    d = vars(obj)
    skip = set(d.get("_non_persistent_buffers_set", ()))
    for k, v in dict(d.get("_parameters", {})).items():
        if v is not None:
            out[prefix + k] = v
    for k, v in dict(d.get("_buffers", {})).items():
        if v is not None and k not in skip:
            out[prefix + k] = v
    for k, m in dict(d.get("_modules", {})).items():
        if m is not None:
            _module_state(m, f"{prefix}{k}.", out)
    if not prefix and d.get("op_threshs") is not None and "op_threshs" not in out:
        op = d["op_threshs"]  # old TorchXRayVision pickles keep it as a plain attribute
        out["op_threshs"] = op if _is_array(op) else np.asarray(op, dtype=np.float32)
    return out


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _as_numpy_state_dict(obj: Any, path: pathlib.Path) -> dict[str, np.ndarray]:
    """Unwraps a loaded object into {key: numpy array}."""
    if hasattr(obj, "__dict__") and "_modules" in vars(obj):
        obj = _module_state(obj)
    if isinstance(obj, Mapping) and obj and not all(_is_array(v) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model", "net", "module"):
            inner = obj.get(key)
            if hasattr(inner, "__dict__") and "_modules" in vars(inner):
                inner = _module_state(inner)
            if isinstance(inner, Mapping) and inner and all(_is_array(v) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(_is_array(v) for v in obj.values()):
        what = (f"a mapping with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping)
                else f"a {type(obj).__name__}")
        raise ValueError(
            f"{str(path)!r} is not a checkpoint of model weights: it holds {what}, not a "
            f"state_dict of tensors. Save one with torch.save(model.state_dict(), 'x.pt').")
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):  # a torch tensor
            v = v.detach().cpu()
            v = (v.float() if v.is_floating_point() else v).numpy()
        a = np.asarray(v)
        out[str(k)] = a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a
    return out


# =========================================================================== name mapping
_LEGACY_DENSE = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\."
                           r"(weight|bias|running_mean|running_var|num_batches_tracked)$")
_PREFIXES = ("module.", "_orig_mod.", "model.")
_EXTRAS = ("op_threshs",)


def normalize_keys(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rewrites other tools' key spellings into torchvision's and splits off non-weights.

    Strips a prefix every weight key shares (`module.`, `_orig_mod.`, `model.`), renames the
    legacy DenseNet spelling `denselayerN.norm.1.weight` -> `denselayerN.norm1.weight`.

    Args:
      state_dict: {torch key: array}.
    Returns:
      (weights, extras): extras holds `op_threshs` when present.
    """
    extras, weights = {}, {}
    for k, v in state_dict.items():
        base = k.rsplit(".", 1)[-1]
        if base in _EXTRAS:
            extras[base] = v
        else:
            weights[k] = v
    changed = True
    while changed and weights:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in weights):
                weights = {k[len(p):]: v for k, v in weights.items()}
                changed = True
    renamed = {}
    for k, v in weights.items():
        m = _LEGACY_DENSE.match(k)
        renamed[m.group(1) + m.group(2) + "." + m.group(3) if m else k] = v
    return renamed, extras


def _torch_entries(variables: Mapping[str, Any]) -> Iterator[tuple[str, str, tuple, str]]:
    """(torch key, collection, path, kind) for every leaf; kind in conv/dense/bn/bias/stat."""
    def walk(tree, path):
        for k, v in tree.items():
            if isinstance(v, Mapping):
                yield from walk(v, path + (k,))
            else:
                yield path + (k,), v

    for col in ("params", "batch_stats"):
        for path, leaf in walk(variables.get(col, {}), ()):
            module, name = ".".join(path[:-1]), path[-1]
            if col == "params" and name == "kernel":
                kind = "conv" if len(leaf.shape) == 4 else "dense"
                yield f"{module}.weight", col, path, kind
            elif col == "params" and name == "scale":
                yield f"{module}.weight", col, path, "bn"
            elif col == "params" and name == "bias":
                yield f"{module}.bias", col, path, "bias"
            elif col == "batch_stats" and name in ("mean", "var"):
                yield f"{module}.running_{name}", col, path, "stat"
            else:
                raise ValueError(f"No torch name for variable {col}/{'/'.join(path)}.")


def _to_torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind == "conv":  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "dense":  # [in, out] -> [out, in]
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.ascontiguousarray(np.transpose(a, (2, 3, 1, 0)))
    if kind == "dense":
        return np.ascontiguousarray(a.T)
    return a


def _to_torch(a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.ascontiguousarray(np.transpose(a, (3, 2, 0, 1)))
    if kind == "dense":
        return np.ascontiguousarray(a.T)
    return a


@functools.lru_cache(maxsize=16)
def abstract_variables(model: Model) -> dict:
    """Shapes and dtypes of `model`'s variables, as `model.init` nests them (no allocation).

    Traces each stage once with `init_with_output` (half the tracing of `eval_shape(model.init)`,
    which runs every stage's init and then its apply).
    """
    s = model.min_size
    h = jax.ShapeDtypeStruct((1, s, s, model.in_channels), jnp.float32)
    key = jax.random.key(0)
    out: dict = {}
    for stage in model.stage_list:
        if stage.module is None:
            h = jax.eval_shape(stage.fn, h)
            continue
        h, tree = jax.eval_shape(
            lambda x, st=stage: st.module.init_with_output(key, x, **st.kwargs(False)), h)
        for col, sub in tree.items():
            node = out.setdefault(col, {})
            for p in stage.path[:-1]:
                node = node.setdefault(p, {})
            node[stage.path[-1]] = sub
    return out


def torch_spec(model: Model) -> dict[str, tuple[tuple[int, ...], str]]:
    """The torch state_dict `model` corresponds to: {key: (torch shape, kind)}.

    Batch-norm `num_batches_tracked` counters are not listed (they carry no weights).
    """
    return {k: (_to_torch_shape(tuple(leaf_shape), kind), kind)
            for k, leaf_shape, kind in _entries_with_shapes(abstract_variables(model))}


def _entries_with_shapes(variables):
    for key, col, path, kind in _torch_entries(variables):
        leaf = variables[col]
        for p in path:
            leaf = leaf[p]
        yield key, leaf.shape, kind


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def torch_to_flax(state_dict: Mapping[str, Any], model: Model) -> dict:
    """Maps a torchvision-named state_dict onto `model`'s variables (pure numpy, no torch).

    Every weight of the model must come from exactly one key and every key must be used:
    `<m>.weight` [O, I, kh, kw] -> params[m]["kernel"] = transpose(w, (2, 3, 1, 0)) [kh, kw, I, O];
    linear `<m>.weight` [out, in] -> kernel = w.T; batch-norm weight/bias -> scale/bias;
    running_mean/var -> batch_stats mean/var. `num_batches_tracked` of a batch norm the model has
    and an `op_threshs` buffer are accepted and dropped (see `normalize_keys` for the key
    spellings accepted).

    Args:
      state_dict: {torch key: array-like}, e.g. from `read_state_dict`.
      model: the target `Model` (its num_classes and in_channels must match the file).
    Returns:
      {"params": ..., "batch_stats": ...} of float32 numpy arrays, ready for `model.apply`.
    Raises:
      ValueError: the file is another architecture (named when recognised), keys are missing or
        unexpected (listed), or shapes differ (each key named with both shapes).
    """
    weights, _ = normalize_keys(state_dict)
    spec = torch_spec(model)
    bn_modules = {k[: -len(".running_mean")] for k in spec if k.endswith(".running_mean")}
    unexpected = [k for k in weights if k not in spec and not (
        k.endswith(".num_batches_tracked") and k[: -len(".num_batches_tracked")] in bn_modules)]
    missing = [k for k in spec if k not in weights]
    if missing or unexpected:
        found = infer_arch(weights)
        if found is not None and found != model.name:
            raise ValueError(
                f"Wrong architecture: the file holds a {found} state_dict, not {model.name}. "
                f"Pass --arch {found} (arch={found!r}).")
        lines = [f"The state_dict does not match {model.name}:"]
        if missing:
            lines.append(f"  missing {len(missing)} key(s): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
        if found is None and missing and len(missing) == len(spec):
            lines.append("  no key matches: is this file a different architecture, or are its "
                         "keys prefixed by a wrapper other than module./model./_orig_mod.?")
        raise ValueError("\n".join(lines))

    bad = []
    for k, (shape, kind) in spec.items():
        got = tuple(np.shape(weights[k]))
        if got != shape:
            bad.append(f"  {k}: file has {list(got)}, {model.name} expects {list(shape)}")
    if bad:
        hint = ""
        head = [k for k in spec if spec[k][1] == "dense"]
        stem = [k for k in spec if spec[k][1] == "conv"][:1]
        if any(b.split(":")[0].strip() in head + stem for b in bad):
            hint = (f"\n(The model was built with num_classes={model.num_classes}, "
                    f"in_channels={model.in_channels}; `convert` reads both from the file.)")
        raise ValueError(f"Shape mismatch for {len(bad)} tensor(s):\n" + "\n".join(bad) + hint)

    variables: dict = {}
    for key, col, path, kind in _torch_entries(abstract_variables(model)):
        a = np.asarray(weights[key])
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{key}: expected floating-point weights, got dtype {a.dtype}.")
        node = variables.setdefault(col, {})
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = _to_flax(a.astype(np.float32), kind)
    return variables


def flax_to_torch(variables: Mapping[str, Any], *, num_batches_tracked: bool = True
                  ) -> dict[str, np.ndarray]:
    """The inverse of `torch_to_flax`: cxr_jax variables as a torchvision state_dict of numpy.

    Args:
      variables: {"params", "batch_stats"} of a cxr_jax model.
      num_batches_tracked: add torch's int64 batch-norm counters (zero) so the result loads into
        a torch module with `load_state_dict(strict=True)`.
    Returns:
      {torch key: numpy array} in torch layout (OIHW convolutions, [out, in] linear weights).
    """
    out = {}
    for key, col, path, kind in _torch_entries(variables):
        leaf = variables[col]
        for p in path:
            leaf = leaf[p]
        out[key] = _to_torch(np.asarray(leaf), kind)
        if num_batches_tracked and key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out


# ====================================================================== recognising the arch
def describe_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any] | None:
    """The architecture a torchvision-named state_dict describes, read from its keys and shapes.

    Returns:
      {"family": "densenet", "block_config", "growth_rate", "num_init_features", "bn_size",
       "num_classes", "in_channels"} or {"family": "resnet", "block", "layers", "widths", "stem",
       "num_classes", "in_channels"}; None when neither pattern is found.
    """
    weights, _ = normalize_keys(state_dict)
    shape = lambda k: tuple(np.shape(weights[k])) if k in weights else None
    dense = {}
    for k in weights:
        m = re.match(r"^features\.denseblock(\d+)\.denselayer(\d+)\.", k)
        if m:
            b, layer = int(m.group(1)), int(m.group(2))
            dense[b] = max(dense.get(b, 0), layer)
    if dense and shape("features.conv0.weight") and shape("classifier.weight"):
        g = shape("features.denseblock1.denselayer1.conv2.weight")
        c1 = shape("features.denseblock1.denselayer1.conv1.weight")
        if g is None or c1 is None:
            return None
        return dict(family="densenet", block_config=tuple(dense[b] for b in sorted(dense)),
                    growth_rate=g[0], num_init_features=shape("features.conv0.weight")[0],
                    bn_size=c1[0] // g[0], num_classes=shape("classifier.weight")[0],
                    in_channels=shape("features.conv0.weight")[1])
    units = {}
    for k in weights:
        m = re.match(r"^layer(\d+)\.(\d+)\.", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            units[i] = max(units.get(i, 0), j + 1)
    if units and shape("conv1.weight") and shape("fc.weight"):
        widths = tuple((shape(f"layer{i}.0.conv1.weight") or (0,))[0] for i in sorted(units))
        return dict(family="resnet",
                    block="bottleneck" if any(k.endswith(".conv3.weight") for k in weights)
                    else "basic",
                    layers=tuple(units[i] for i in sorted(units)), widths=widths,
                    stem=shape("conv1.weight")[0], num_classes=shape("fc.weight")[0],
                    in_channels=shape("conv1.weight")[1])
    return None


def infer_arch(state_dict: Mapping[str, Any]) -> str | None:
    """The registered model name whose structure the state_dict has, or None."""
    desc = describe_state_dict(state_dict)
    if desc is None:
        return None
    for name in models.names():
        if not name.startswith(desc["family"]):
            continue
        config = dict(models.get(name, num_classes=1).config)
        if all(config.get(k) == v for k, v in desc.items()
               if k not in ("family", "num_classes", "in_channels")):
            return name
    return None


# ============================================================================ metadata
def calibrate(logits: jax.Array, op_threshs: Any) -> jax.Array:
    """TorchXRayVision's operating-point calibration of multi-label outputs.

    With p = sigmoid(logit) and t the output's operating point (the threshold picked on
    validation data), p is mapped piecewise-linearly so that t lands on 0.5:

        p < t:  p / (2 t)          p >= t:  1 - (1 - p) / (2 (1 - t))

    and outputs with no threshold (t = NaN) become 0.5. Monotone in p for each output, so it
    ranks images as the logits do; use it to read predictions, not as the attribution target
    (explain the logits).

    Args:
      logits: [..., K] raw outputs.
      op_threshs: [K] thresholds in (0, 1), NaN where none.
    Returns:
      [..., K] calibrated scores in [0, 1].
    """
    logits = jnp.asarray(logits)
    t = jnp.asarray(np.asarray(op_threshs, dtype=np.float32), dtype=logits.dtype)
    if t.ndim != 1 or logits.shape[-1:] != t.shape:
        raise ValueError(f"op_threshs must have shape [K] matching the logits' last axis; got "
                         f"{t.shape} for logits {logits.shape}.")
    p = jax.nn.sigmoid(logits)
    valid = ~jnp.isnan(t)
    ts = jnp.where(valid, t, 0.5)  # keeps both branches finite, so gradients stay finite
    out = jnp.where(p < ts, p / (2 * ts), 1 - (1 - p) / (2 * (1 - ts)))
    return jnp.where(valid, out, 0.5)


def input_convention(source: str, in_channels: int, size: int = 224) -> dict[str, Any]:
    """How images must be scaled for the converted model (recorded in model.json).

    torchxrayvision: single channel in [-1024, 1024] (x01 * 2048 - 1024), centre-cropped and
    resized to `size`. torchvision: [0, 1] then (x - mean) / std with ImageNet statistics when the
    model has 3 channels.
    """
    if source == "torchxrayvision":
        return {"range": [-1024, 1024], "channels": in_channels, "size": size, "crop": "center"}
    conv = {"range": [0, 1], "channels": in_channels, "size": size}
    if in_channels == 3:
        conv.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    return conv


def normalize_input(images: jax.Array, metadata: Mapping[str, Any]) -> jax.Array:
    """Scales images in [0, 1] to a converted model's input convention.

    [-1024, 1024] convention: y = x * 2048 - 1024. Otherwise y = (x - mean) / std per channel
    when mean/std are recorded, else x unchanged (resizing is the caller's: see
    metadata["input_convention"]["size"]).

    Args:
      images: [B, H, W, C] in [0, 1] with C = the model's channels.
      metadata: `load_metadata(dir)` or its "input_convention" entry.
    Returns:
      [B, H, W, C] ready for `model.apply`.
    """
    conv = metadata.get("input_convention", metadata)
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != conv["channels"]:
        raise ValueError(f"Expected images [B, H, W, {conv['channels']}] in [0, 1], got shape "
                         f"{images.shape}.")
    lo, hi = conv["range"]
    if "mean" in conv:
        mean = jnp.asarray(conv["mean"], images.dtype)
        std = jnp.asarray(conv["std"], images.dtype)
        return (images - mean) / std
    return images * (hi - lo) + lo


def _known_xrv(path: pathlib.Path, xrv_weights: str | None) -> dict[str, Any] | None:
    if xrv_weights is not None:
        if xrv_weights not in XRV_WEIGHTS:
            raise ValueError(f"Unknown TorchXRayVision weights {xrv_weights!r}; known: "
                             f"{', '.join(XRV_WEIGHTS)}.")
        return XRV_WEIGHTS[xrv_weights]
    for name, info in XRV_WEIGHTS.items():
        if path.stem == pathlib.Path(info["file"]).stem:
            return info
    return None


def _json_floats(values) -> list | None:
    if values is None:
        return None
    return [None if (v is None or math.isnan(float(v))) else float(v)
            for v in np.asarray(values, dtype=np.float64).reshape(-1)]


# ======================================================================= convert / save / load
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
    model = models.get(arch, num_classes=int(desc["num_classes"]),
                       in_channels=int(desc["in_channels"]))
    variables = torch_to_flax(state, model)

    xrv = _known_xrv(path, xrv_weights) if source == "torchxrayvision" else None
    if xrv is not None and xrv["arch"] != arch:
        raise ValueError(f"TorchXRayVision weights {xrv_weights or path.name!r} are a "
                         f"{xrv['arch']}, but the file is a {arch}.")
    k = model.num_classes
    if op_threshs is None:
        op_threshs = extras.get("op_threshs")
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
    metadata = {
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
    save(out, variables, metadata, overwrite=overwrite)
    return model, variables


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
    (out / "model.json").write_text(json.dumps(dict(metadata), indent=2, allow_nan=False) + "\n")


def load_metadata(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The `model.json` of a converted checkpoint (op_threshs with NaN where none)."""
    path = pathlib.Path(ckpt_dir) / "model.json"
    if not path.is_file():
        raise ValueError(f"{str(ckpt_dir)!r} is not a cxr_jax checkpoint: no model.json. Make one "
                         f"with `python -m cxr_jax.convert`.")
    meta = json.loads(path.read_text())
    if meta.get("op_threshs") is not None:
        meta["op_threshs"] = [math.nan if v is None else float(v) for v in meta["op_threshs"]]
    return meta


def load(ckpt_dir: str | os.PathLike) -> tuple[Model, dict]:
    """Loads a converted checkpoint.

    Args:
      ckpt_dir: a folder written by `convert` / `save`.
    Returns:
      (model, variables): `model.apply(variables, x)` gives the logits for images x prepared as
      `load_metadata(ckpt_dir)["input_convention"]` says (see `normalize_input`).
    """
    import orbax.checkpoint as ocp

    meta = load_metadata(ckpt_dir)
    model = models.get(meta["arch"], num_classes=int(meta["num_classes"]),
                       in_channels=int(meta["in_channels"]))
    vdir = pathlib.Path(ckpt_dir).absolute() / "variables"
    if not vdir.is_dir():
        raise ValueError(f"{str(ckpt_dir)!r} has model.json but no variables/ folder.")
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(vdir)  # saved as numpy arrays: restores to host memory
    variables = {col: jax.tree_util.tree_map(jnp.asarray, restored[col])
                 for col in ("params", "batch_stats") if col in restored}
    return model, variables


# ================================================================================== CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cxr_jax.convert",
        description="Convert a torchvision / TorchXRayVision state_dict into a cxr_jax "
                    "checkpoint folder.")
    p.add_argument("--source", choices=SOURCES, default="torchvision")
    p.add_argument("--arch", default=None,
                   help=f"one of {', '.join(models.names())}; inferred from the file if omitted")
    p.add_argument("--weights", required=True, help=".pt/.pth state_dict, .safetensors or .npz")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--trust_pickle", action="store_true",
                   help="allow unpickling whole-module files (runs code from the file)")
    p.add_argument("--xrv_weights", default=None, choices=sorted(XRV_WEIGHTS),
                   help="TorchXRayVision weights name (labels, op_threshs, input size)")
    p.add_argument("--pathologies", default=None, help="comma-separated output names")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see `_parser`."""
    a = _parser().parse_args(argv)
    try:
        model, variables = convert(
            a.weights, a.out, arch=a.arch, source=a.source, trust_pickle=a.trust_pickle,
            xrv_weights=a.xrv_weights, overwrite=a.overwrite,
            pathologies=None if a.pathologies is None else a.pathologies.split(","))
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(variables["params"]))
    print(f"wrote {a.out}: {model.name}, {model.num_classes} outputs, {model.in_channels} input "
          f"channel(s), {n:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
