"""Reading state_dict files without running code stored in them.

Owns everything between a weights file on disk and a flat {torch key: numpy array}: recognising
the container from its first bytes (`.safetensors`, `.npz`, torch zip or legacy pickle), loading
torch files with `weights_only=True`, the opt-in lenient unpickling of whole pickled modules (with
inert stand-ins for classes that cannot be imported), and unwrapping the nested checkpoints
training tools write. torch and safetensors are imported only when a file needs them.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import types
import warnings
import zipfile
from typing import Any, Mapping

import numpy as np

_RESAVE_HINT = (
    "Re-save it as a plain state_dict in the environment that made it:\n"
    "    import torch; model = torch.load(FILE, weights_only=False)  # the file you trust\n"
    "    torch.save(model.state_dict(), 'x.pt')\n"
    "and convert 'x.pt'; or pass --trust_pickle (trust_pickle=True) if you trust this file: "
    "unpickling can run arbitrary code."
)


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
