"""What the explain command writes per image, and reading it back.

Per image `<name>` (see `inputs.output_name`):

  maps/<name>.npz        compressed: "probs" [K], "scores" [K] (ranking scores), "targets" [T]
                         output indices, "finding_names" [K], "methods" [M], "path", and
                         "maps_<method>" [T, S, S] raw maps; with float16 storage each map is
                         divided by its largest |value| ("scale_<method>" [T]) before the cast.
                         `read` undoes that and returns float32 maps.
  overlays/<name>/input.png and overlays/<name>/<method>.<target>.png   the model's crop and
                         each map over it (|map| scaled by its 99.5th percentile, jet colours)

Every file is written atomically, the npz last: an image counts as done once its npz exists.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np
from PIL import Image

from cxr_jax.common.files import atomic_path
from cxr_jax.explain.engine import Result

MAPS_DTYPES = ("float32", "float16")
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def map_path(workdir: str, name: str) -> str:
    return os.path.join(workdir, "maps", f"{name}.npz")


def overlay_file(name: str, method: str | None = None, target: str | None = None) -> str:
    """Path of an overlay relative to the workdir (the input crop when method is None)."""
    leaf = "input.png" if method is None else f"{method}.{_SAFE.sub('_', target)}.png"
    return f"overlays/{name}/{leaf}"


def _lut(cmap: str) -> np.ndarray:
    import matplotlib

    return np.round(matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(
        np.float32)


class Writer:
    """Writes each `Result` (npz, and overlays unless `overlays=False`)."""

    def __init__(self, workdir: str, finding_names: Sequence[str], *,
                 maps_dtype: str = "float32", overlays: bool = True, cmap: str = "jet",
                 alpha: float = 0.5):
        if maps_dtype not in MAPS_DTYPES:
            raise ValueError(f"maps_dtype must be one of {MAPS_DTYPES}, got {maps_dtype!r}.")
        self.workdir, self.names = workdir, list(finding_names)
        self.maps_dtype, self.overlays, self.alpha = maps_dtype, overlays, float(alpha)
        self._lut = _lut(cmap)
        os.makedirs(os.path.join(workdir, "maps"), exist_ok=True)

    def write(self, r: Result) -> None:
        if self.overlays:
            self._overlays(r)
        arrays = {"probs": r.probs.astype(np.float32), "scores": r.scores.astype(np.float32),
                  "targets": r.targets.astype(np.int32), "path": np.asarray(r.item.path),
                  "finding_names": np.asarray(self.names), "methods": np.asarray(list(r.maps))}
        for m, v in r.maps.items():
            v = np.asarray(v, np.float32)
            if self.maps_dtype == "float16":
                scale = np.abs(v).max(axis=(-2, -1))
                scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0).astype(np.float32)
                arrays[f"scale_{m}"] = scale
                v = (v / scale[:, None, None]).astype(np.float16)
            arrays[f"maps_{m}"] = v
        path = map_path(self.workdir, r.item.name)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    def _overlays(self, r: Result) -> None:
        folder = os.path.join(self.workdir, "overlays", r.item.name)
        os.makedirs(folder, exist_ok=True)
        grey = np.clip(r.shown, 0.0, 1.0)[..., None] * np.float32(255.0)
        _png(os.path.join(self.workdir, overlay_file(r.item.name)),
             np.repeat(grey, 3, axis=-1))
        for m, maps in r.maps.items():
            heat = self._lut[display_levels(maps)]  # [T, S, S, 3]
            rgb = (1.0 - self.alpha) * grey + self.alpha * heat
            for t, target in enumerate(r.targets):
                _png(os.path.join(self.workdir,
                                  overlay_file(r.item.name, m, self.names[int(target)])), rgb[t])


def display_levels(maps: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """uint8 colour levels of maps [..., H, W]: |map| / its `percentile`, clipped to [0, 1];
    a map that is zero (or not finite) everywhere shows as level 0."""
    a = np.abs(np.nan_to_num(np.asarray(maps, np.float32), nan=0.0, posinf=0.0, neginf=0.0))
    flat = a.reshape(a.shape[:-2] + (-1,))
    top = np.percentile(flat, percentile, axis=-1)[..., None, None]
    top = np.where(top > 0, top, np.maximum(a.max(axis=(-2, -1), keepdims=True), 1e-30))
    return np.round(np.clip(a / top, 0.0, 1.0) * 255).astype(np.uint8)


def _png(path: str, rgb: np.ndarray) -> None:
    image = Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)


def read(path: str, *, maps: bool = True) -> dict:
    """One image's results: {"path", "probs", "scores", "targets", "finding_names",
    "methods", "maps": {method: float32 [T, S, S]}} (maps left out when `maps=False`)."""
    with np.load(path, allow_pickle=False) as z:
        out = {"path": str(z["path"]), "probs": z["probs"], "scores": z["scores"],
               "targets": z["targets"], "finding_names": [str(n) for n in z["finding_names"]],
               "methods": [str(m) for m in z["methods"]]}
        if maps:
            out["maps"] = {}
            for m in out["methods"]:
                v = z[f"maps_{m}"].astype(np.float32)
                if f"scale_{m}" in z:
                    v = v * z[f"scale_{m}"][:, None, None]
                out["maps"][m] = v
    return out
