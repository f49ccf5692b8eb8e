"""One loader for every model cxr_jax can run: `load(path) -> Loaded(model, variables, metadata)`.

Two kinds of folder hold a model:

  a training workdir   `config.json` (written by `cxr_jax.training.fit`) and `checkpoints/`
                       (orbax steps of the train state); the latest complete step is read, only
                       its params and batch_stats (not the optimizer state)
  a converted folder   `model.json` and `variables/`, written by `python -m cxr_jax.convert`

`Metadata` says what the rest of the library needs to use the model on new images: the
finding names of its outputs, the input size, crop, channels and intensity convention, how
outputs become probabilities, and operating points where the source has them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models.base import Model
from cxr_jax.models.registry import get

OUTPUTS = ("sigmoid", "softmax", "identity")
_LOSS_OUTPUT = {"bce": "sigmoid", "ce": "softmax", "mse": "identity"}


@dataclasses.dataclass(frozen=True)
class Metadata:
    """What a model expects as input and what its outputs mean.

    Attributes:
      kind: "training" (a training workdir) or "converted" (a `cxr_jax.convert` folder).
      path: the folder it was loaded from.
      arch: registered architecture name.
      finding_names: one name per output; "" marks an output the source never trained
        (TorchXRayVision's unused slots), `output_<i>` where the source names none.
      input_size: side of the square input.
      channels: input channels (1 for radiographs; 3 for ImageNet-style models).
      value_range: (lo, hi) that image intensity 0 and 1 map to: (-1024, 1024) is
        TorchXRayVision's convention (and ours), (0, 1) leaves [0, 1] images as they are.
      mean, std: per-channel normalisation applied after the range (ImageNet models), or None.
      crop: "centre" (the centred square of the image, then resize) or None (squash).
      output: how logits become probabilities: "sigmoid" (multi-label; converted models unless
        their model.json says "output"), "softmax", "identity" (a regressor's raw score).
      op_threshs: operating points [K] (NaN where none) or None.
      source: "cxr_jax", "torchvision" or "torchxrayvision".
    """

    kind: str
    path: str
    arch: str
    finding_names: tuple[str, ...]
    input_size: int
    channels: int
    value_range: tuple[float, float]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop: str | None = "centre"
    output: str = "sigmoid"
    op_threshs: tuple[float, ...] | None = None
    source: str = "cxr_jax"

    @property
    def trained(self) -> tuple[int, ...]:
        """Indices of the outputs that mean something (named, not an unused slot)."""
        return tuple(i for i, n in enumerate(self.finding_names) if n)

    def to_input(self, images01: np.ndarray) -> np.ndarray:
        """Images in [0, 1], already cropped and resized, as the model's input.

        Args:
          images01: [..., H, W] or [..., H, W, 1] (grey) or [..., H, W, channels].
        Returns:
          float32 [..., H, W, channels]: lo + (hi - lo) x, grey repeated over the channels, then
          (x - mean) / std per channel when the model has them.
        """
        x = np.asarray(images01, np.float32)
        if x.ndim < 3 or x.shape[-1] not in (1, self.channels):
            x = x[..., None]
        if x.shape[-1] != self.channels:
            x = np.repeat(x, self.channels, axis=-1)
        lo, hi = self.value_range
        x = x * np.float32(hi - lo) + np.float32(lo)
        if self.mean is not None:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x

    def probabilities(self, logits: jax.Array) -> jax.Array:
        """The model's outputs as probabilities (raw scores for a regressor)."""
        if self.output == "sigmoid":
            return jax.nn.sigmoid(logits)
        if self.output == "softmax":
            return jax.nn.softmax(logits, axis=-1)
        return logits

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (for results files)."""
        out = dataclasses.asdict(self)
        if self.op_threshs is not None:
            out["op_threshs"] = [None if math.isnan(t) else t for t in self.op_threshs]
        return out


class Loaded(NamedTuple):
    """A model ready to run: `model.apply(variables, metadata.to_input(images01))`."""

    model: Model
    variables: dict
    metadata: Metadata


def load(path: str | os.PathLike) -> Loaded:
    """Loads a training workdir or a converted checkpoint folder.

    Args:
      path: a folder with `config.json` + `checkpoints/` (training) or `model.json` +
        `variables/` (converted).
    Returns:
      `Loaded(model, variables, metadata)`; the model computes in float32 even if it was
      trained in bfloat16.
    Raises:
      ValueError: the path is neither kind (the message says what each holds), or holds no
        checkpoint yet.
    """
    folder = pathlib.Path(path).expanduser()
    if (folder / "model.json").is_file():
        return _load_converted(folder)
    if (folder / "config.json").is_file():
        return _load_training(folder)
    what = "does not exist" if not folder.exists() else (
        "is a file" if folder.is_file() else "holds neither model.json nor config.json")
    raise ValueError(
        f"Cannot load a model from {str(path)!r}: it {what}. Pass a training workdir "
        f"(config.json + checkpoints/, from experiments.train or experiments.quickstart) or a "
        f"converted checkpoint (model.json + variables/, from `python -m cxr_jax.convert`).")


def read_model_json(folder: str | os.PathLike) -> dict[str, Any]:
    """The `model.json` of a converted checkpoint (op_threshs with NaN where none)."""
    path = pathlib.Path(folder) / "model.json"
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} is not a cxr_jax checkpoint: no model.json. Make one "
                         f"with `python -m cxr_jax.convert`.")
    meta = json.loads(path.read_text())
    if meta.get("op_threshs") is not None:
        meta["op_threshs"] = [math.nan if v is None else float(v) for v in meta["op_threshs"]]
    return meta


def _load_converted(folder: pathlib.Path) -> Loaded:
    import orbax.checkpoint as ocp

    meta = read_model_json(folder)
    model = get(meta["arch"], num_classes=int(meta["num_classes"]),
                in_channels=int(meta["in_channels"]))
    vdir = folder.absolute() / "variables"
    if not vdir.is_dir():
        raise ValueError(f"{str(folder)!r} has model.json but no variables/ folder.")
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(vdir)  # saved as numpy arrays: restores to host memory
    variables = {col: jax.tree_util.tree_map(jnp.asarray, restored[col])
                 for col in ("params", "batch_stats") if col in restored}
    return Loaded(model, variables, _converted_metadata(meta, str(folder)))


def _converted_metadata(meta: Mapping[str, Any], path: str) -> Metadata:
    k = int(meta["num_classes"])
    names = [str(n) for n in meta.get("pathologies") or ()]
    if not names:
        names = [f"output_{i}" for i in range(k)]
    conv = meta.get("input_convention") or {}
    op = meta.get("op_threshs")
    return Metadata(
        kind="converted", path=path, arch=meta["arch"], finding_names=tuple(names),
        input_size=int(conv.get("size", 224)), channels=int(meta["in_channels"]),
        value_range=tuple(float(v) for v in conv.get("range", (0.0, 1.0))),
        mean=tuple(conv["mean"]) if "mean" in conv else None,
        std=tuple(conv["std"]) if "std" in conv else None,
        crop="centre", output=str(meta.get("output", "sigmoid")),
        op_threshs=None if op is None else tuple(float(t) for t in op),
        source=str(meta.get("source", "torchvision")))


def latest_step(checkpoints: pathlib.Path) -> int | None:
    """The newest complete orbax step in a folder (orbax renames a step's folder to its number
    only once it is fully written, so unfinished ones never count)."""
    steps = [int(p.name) for p in checkpoints.iterdir()
             if p.is_dir() and p.name.isdigit()] if checkpoints.is_dir() else []
    return max(steps) if steps else None


def _load_training(folder: pathlib.Path) -> Loaded:
    import orbax.checkpoint as ocp

    saved = json.loads((folder / "config.json").read_text())
    config, names = saved["config"], tuple(saved["label_names"])
    loss = config.get("loss") or "bce"
    step = latest_step(folder / "checkpoints")
    if step is None:
        raise ValueError(f"{str(folder)!r} is a training workdir without a checkpoint yet: "
                         f"train first (experiments.train or experiments.quickstart).")
    model = get(config["model"], num_classes=1 if loss == "mse" else len(names), in_channels=1)
    state_dir = (folder / "checkpoints" / str(step) / "state").absolute()
    handler = ocp.PyTreeCheckpointHandler()  # the step's "state" item, without a template
    tree = handler.metadata(state_dir).tree
    wanted = {col: tree[col] for col in ("params", "batch_stats") if col in tree}
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=wanted, restore_args=args, partial_restore=True))
    handler.close()
    variables = {col: jax.tree_util.tree_map(jnp.asarray, restored[col]) for col in wanted}
    size = int(config.get("image_size", 224))
    metadata = Metadata(
        kind="training", path=str(folder), arch=config["model"],
        finding_names=names if loss != "mse" else names[:1], input_size=size, channels=1,
        value_range=(-1024.0, 1024.0), crop="centre", output=_LOSS_OUTPUT.get(loss, "sigmoid"),
        source="cxr_jax")
    return Loaded(model, variables, metadata)
