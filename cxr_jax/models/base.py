"""A model as a pipeline of named stages.

Every attribution method needs one of three things from a network: the gradient with respect to
the input, the activation (and its gradient) at a named layer, or the power to replace the
activation at a named layer. A `Model` gives all three through one pure function:

    logits, acts = model.apply(variables, x, taps=("denseblock3",),
                               edits={"denseblock3": lambda a: a + delta})

A model is a tuple of `Stage`s in forward order. Each stage owns a Flax module (or none, for
parameter-free stages such as pooling) and the path of its variables inside the whole tree, which
mirrors torchvision's `state_dict` names (`features.denseblock1.denselayer1.conv1` ...), so weights
convert by name. `apply(start=S)` runs only the stages after `S` on an activation of `S`, so a
method can run the prefix of the network once and rerun only the suffix.

A stage can also declare `Point`s: convolutions inside its module (a ResNet unit's `conv1`,
`conv2`, `conv3`, `downsample.0`) that are tapped and edited like stages under the names
`"<stage>.<point>"` (`"layer4.1.conv2"`, its output before the batch norm that follows it) and
`"<stage>.<point>.input"` (its input, tap only). A stage's module is only asked for its points
when a tap or edit names one, so a plain forward is the same program as without them.

Each builder also declares, once, the model's notable layers (`Layers`): the default layer to
explain, IBA's bottleneck and Multi-layer IBA's layers, the last stage at stride 16 and the units
of each stage. Methods and studies ask the model (`model.layer(...)`, `default_layer(model, ...)`)
instead of guessing from names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.common.trees import get_path, set_path

Array = jax.Array
Variables = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Point:
    """A convolution inside a stage's module that can be tapped and edited like a stage.

    Attributes:
      name: its name inside the stage, as torchvision names the module ("conv2",
        "downsample.0"); the model-level name is "<stage>.<name>", e.g. "layer4.1.conv2".
      kernel, stride, padding: the (square) convolution's geometry, so a method can unfold the
        input exactly as the convolution does.
    """

    name: str
    kernel: int = 1
    stride: int = 1
    padding: int = 0


@dataclasses.dataclass(frozen=True)
class Stage:
    """One named stage of a pipeline.

    Attributes:
      name: the stage name users tap, edit and start from (torchvision's module name).
      path: where the stage's variables live in the variables tree, or () for none.
      module: a Flax module, or None.
      fn: a parameter-free function `x -> y`, used when `module` is None.
      mode: how the module learns train/eval mode: "train" (called with `train=`),
        "batchnorm" (a bare BatchNorm, called with `use_running_average=`) or "none".
      points: the `Point`s inside the module, in forward order. A module with points accepts
        the keywords `taps` (local names: "<point>" for a convolution's output, "<point>.input"
        for its input) and `edits` ({local point name: f}, f applied to the convolution's
        output before anything reads it) and, when either is given, returns
        `(y, {local name: activation})`; without them it is called exactly as before.
    """

    name: str
    path: tuple[str, ...] = ()
    module: nn.Module | None = None
    fn: Callable[[Array], Array] | None = None
    mode: str = "train"
    points: tuple[Point, ...] = ()

    def kwargs(self, train: bool) -> dict:
        if self.mode == "train":
            return {"train": train}
        if self.mode == "batchnorm":
            return {"use_running_average": not train}
        return {}


@dataclasses.dataclass(frozen=True)
class Layers:
    """The layers a model declares for methods and studies (set once by its builder).

    Attributes:
      explain: the default layer of layer-based methods (the CAM family, Score-CAM, NormGrad):
        the last rectified convolutional feature map (ResNet `layer4`, DenseNet `relu5`).
      iba: the bottleneck layer of IBA, Inverse IBA and Regression IBA (the CXR reference's
        `denseblock3`; ResNet `layer3`, at the same stride 16).
      multilayer_iba: Multi-layer IBA's layers, shallowest first (DenseNet denseblock1-3,
        ResNet layer1-3).
      stride16: the last stage whose output is at 1/16 of the input size.
      units: (stage, its units in forward order) for stages made of tapped units (ResNet:
        ("layer4", ("layer4.0", "layer4.1", "layer4.2")), ...); "<stage>.last" names the last.
    """

    explain: str
    iba: str | None = None
    multilayer_iba: tuple[str, ...] = ()
    stride16: str | None = None
    units: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def aliases(self) -> dict[str, str]:
        """Layer names that stand for a stage: "stride16" and "<stage>.last"."""
        out = {"stride16": self.stride16} if self.stride16 else {}
        out.update({f"{stage}.last": names[-1] for stage, names in self.units if names})
        return out


def check_stage(model: Any, name: Any, what: str = "layer") -> str:
    """`name` if it is one of `model.stages`, else a ValueError listing the valid names."""
    stages = tuple(model.stages)
    if not isinstance(name, str) or name not in stages:
        raise ValueError(
            f"Unknown {what} {name!r} for model {getattr(model, 'name', model)!r}. Valid stage "
            f"names: {', '.join(stages)}.")
    return name


def resolve_layer(model: Any, name: Any, what: str = "layer") -> str:
    """A stage name, or an alias the model declares ("stride16", "layer4.last"), as a stage."""
    layers = getattr(model, "layers", None)
    if isinstance(name, str) and layers is not None and name not in model.stages:
        name = layers.aliases().get(name, name)
    return check_stage(model, name, what)


def default_layer(model: Any, role: str = "explain") -> str | tuple[str, ...]:
    """The layer (or layers) the model declares for `role`: a field of `Layers` such as
    "explain", "iba" or "multilayer_iba"."""
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} declares no layers; pass layer= "
            f"explicitly (one of its stages: {', '.join(model.stages)}).")
    if role not in {f.name for f in dataclasses.fields(Layers)} - {"units"}:
        raise ValueError(f"Unknown layer role {role!r}; use explain, iba, multilayer_iba or "
                         f"stride16.")
    if not getattr(layers, role):
        raise ValueError(f"Model {getattr(model, 'name', model)!r} declares no {role} layer; "
                         f"pass layer= explicitly (one of its stages: {', '.join(model.stages)}).")
    return getattr(layers, role)


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A classifier as a pipeline of named stages (see module docstring).

    A `Model` is an immutable, hashable description: it can be closed over or passed as a static
    argument to `jax.jit`. Variables live outside it, as in Flax.

    Attributes:
      name: registry name, e.g. "densenet121".
      stages: the `Stage`s in forward order; the last produces the logits.
      num_classes: size of the output (1 = a regression head, raw output).
      in_channels: channels the input must have.
      min_size: smallest spatial input size the architecture accepts.
      config: the builder's keyword arguments, so variants (guided ReLU, dtype) can be rebuilt.
      layers: the layers the architecture declares (`Layers`).
      builder: the function that built the model, `builder(name, num_classes=, in_channels=,
        **config)`; variants are built by calling it again with changed options.
    """

    name: str
    stage_list: tuple[Stage, ...]
    num_classes: int
    in_channels: int
    min_size: int = 32
    config: tuple[tuple[str, Any], ...] = ()
    layers: Layers | None = None
    builder: Callable[..., "Model"] | None = None

    def _key(self):
        return (self.name, self.num_classes, self.in_channels, self.config)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other) -> bool:
        return isinstance(other, Model) and self._key() == other._key()

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, num_classes={self.num_classes}, "
                f"in_channels={self.in_channels}, {len(self.stage_list)} stages)")

    # ------------------------------------------------------------------ names
    @property
    def stages(self) -> tuple[str, ...]:
        """Stage names in forward order."""
        return tuple(s.name for s in self.stage_list)

    def _index(self, name: str, what: str) -> int:
        return self.stages.index(check_stage(self, name, what))

    @property
    def points(self) -> tuple[str, ...]:
        """Names of the convolutions inside stages, in forward order (ResNet: "layer1.0.conv1",
        "layer1.0.conv2", ..., "layer4.0.downsample.0", ...; none for DenseNet). Each is tapped
        (its output, before the batch norm that follows) and edited like a stage;
        "<point>.input" taps its input."""
        return tuple(f"{s.name}.{p.name}" for s in self.stage_list for p in s.points)

    def point(self, name: str, what: str = "layer") -> tuple[Stage, Point]:
        """The stage holding point `name` and the `Point`, or a ValueError naming the valid
        points (those of the unit `name` starts with, else the model's)."""
        for stage in self.stage_list:
            for p in stage.points:
                if name == f"{stage.name}.{p.name}":
                    return stage, p
        raise ValueError(self._unknown_point(name, what))

    def _unknown_point(self, name: Any, what: str) -> str:
        owners = [s for s in self.stage_list
                  if s.points and isinstance(name, str) and name.startswith(s.name + ".")]
        if owners:
            stage = max(owners, key=lambda s: len(s.name))
            valid = [f"{stage.name}.{p.name}" for p in stage.points]
            return (f"Unknown {what} {name!r} for model {self.name!r}: {stage.name} holds the "
                    f"convolutions {', '.join(valid)} (and their '.input' taps).")
        points = self.points
        if not points:
            return (f"Unknown {what} {name!r} for model {self.name!r}: it has no points inside "
                    f"stages. Valid stage names: {', '.join(self.stages)}.")
        shown = points if len(points) <= 24 else points[:4] + ("...",) + points[-4:]
        return (f"Unknown {what} {name!r} for model {self.name!r}. Valid stage names: "
                f"{', '.join(self.stages)}. Valid points (convolutions inside units, "
                f"{len(points)} in all, listed by Model.points): {', '.join(shown)}.")

    def _locate(self, name: Any, what: str, inputs: bool = False) -> tuple[int, str | None]:
        """(index of the stage that computes `name`, local point name or None for a stage)."""
        if isinstance(name, str) and name in self.stages:
            return self.stages.index(name), None
        if isinstance(name, str) and self.points:
            base = name[: -len(".input")] if name.endswith(".input") else name
            for i, stage in enumerate(self.stage_list):
                for p in stage.points:
                    if base == f"{stage.name}.{p.name}":
                        if base != name and not inputs:
                            raise ValueError(
                                f"Cannot {what} {name!r}: a convolution's input can be tapped, "
                                f"not edited; edit {base!r} (its output) or the stage before.")
                        return i, name[len(stage.name) + 1:]
            if any(name.startswith(s.name + ".") for s in self.stage_list if s.points):
                raise ValueError(self._unknown_point(name, what))
            try:
                check_stage(self, name, what)
            except ValueError as e:
                raise ValueError(f"{e} Convolutions inside units can be named too, e.g. "
                                 f"{self.points[-1]!r} (see Model.points).") from None
        return self._index(name, what), None

    def layer(self, name: str | None = None, role: str = "explain") -> str:
        """A validated stage name: `name` (a stage or an alias such as "stride16" or
        "layer4.last"), or the layer the model declares for `role` when `name` is None."""
        return default_layer(self, role) if name is None else resolve_layer(self, name)

    def _check_input(self, x: Array, start: str | None) -> None:
        if start is not None:
            return
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4:
            raise ValueError(
                f"{self.name}: expected an image batch of rank 4 [B, H, W, C] with "
                f"C={self.in_channels}, got shape {shape}. Add a batch axis (x[None]) or a "
                f"channel axis (x[..., None]) as needed."
            )
        if shape[-1] != self.in_channels:
            raise ValueError(
                f"{self.name}: expected {self.in_channels} input channel(s) in the last axis "
                f"(NHWC), got shape {tuple(shape)}. Build the model with "
                f"in_channels={shape[-1]} or convert the image."
            )
        if shape[1] < self.min_size or shape[2] < self.min_size:
            raise ValueError(
                f"{self.name}: input {shape[1]}x{shape[2]} is smaller than the minimum "
                f"{self.min_size}x{self.min_size} this architecture can downsample."
            )

    # ------------------------------------------------------------- variables
    def init(self, key: Array, x: Array) -> dict:
        """Initialises all variables by running `x` through every stage once.

        Args:
          key: a PRNG key.
          x: an example input [B, H, W, C] (only its shape and dtype matter).
        Returns:
          {"params": ..., "batch_stats": ...} nested as torchvision names the modules.

        Runs as one compiled program at XLA's lowest backend optimisation level: op by op, every
        parameter's initialiser compiled on its own (7 s for resnet_tiny, 24 s for DenseNet-121
        on a 2-core CPU); optimised, the one program took 3.6 s and 8 s to compile, most of it
        spent optimising random-number code that runs once; unoptimised, 0.8 s and 6 s. The
        values are the same draws (within float32 rounding of the initialisers' arithmetic).
        """
        self._check_input(x, None)
        if any(isinstance(a, jax.core.Tracer) for a in (key, x)):  # inside a caller's trace
            return self._init_variables(key, x)
        return _init_compiled(self, key, jnp.zeros(x.shape, x.dtype))

    def _init_variables(self, key: Array, x: Array) -> dict:
        variables: dict[str, dict] = {}
        h = x
        for i, stage in enumerate(self.stage_list):
            if stage.module is None:
                h = stage.fn(h)
                continue
            kw = stage.kwargs(False)
            v = stage.module.init(jax.random.fold_in(key, i), h, **kw)
            for col, tree in v.items():
                set_path(variables.setdefault(col, {}), stage.path, tree)
            h = stage.module.apply(v, h, **kw)
        return variables

    def param_count(self, variables: Variables | None = None) -> int:
        """Number of trainable parameters (computed with `jax.eval_shape`, no allocation)."""
        if variables is None:
            x = jax.ShapeDtypeStruct((1, 224, 224, self.in_channels), jnp.float32)
            variables = jax.eval_shape(self.init, jax.random.key(0), x)
        return sum(int(p.size) for p in jax.tree_util.tree_leaves(variables["params"]))

    # ----------------------------------------------------------------- apply
    def apply(
        self,
        variables: Variables,
        x: Array,
        *,
        taps: Sequence[str] = (),
        edits: Mapping[str, Callable[[Array], Array]] | None = None,
        start: str | None = None,
        train: bool = False,
        mutable: Sequence[str] | bool = False,
    ):
        """Runs the pipeline.

        Args:
          variables: {"params", "batch_stats"} as returned by `init` (or converted weights).
          x: images [B, H, W, C]; with `start=S`, an activation of stage S instead.
          taps: stage names whose outputs (after any edit) are returned; also point names
            (`Model.points`, e.g. "layer4.1.conv2": a convolution's output inside a unit) and
            "<point>.input" (that convolution's input).
          edits: {stage: f}; f is applied to the stage's output before the next stage reads it.
            An additive edit at zero gives the gradient with respect to that stage; a
            bottleneck is an edit. A point can be edited too (its convolution's output).
          start: run only the stages after this one, treating `x` as its output.
          train: batch-norm uses batch statistics (pass `mutable=["batch_stats"]` to get the
            updated running statistics back, as in Flax).
          mutable: Flax-style mutable collections, used with train=True.
        Returns:
          logits [B, num_classes]; `(logits, {stage: activation})` when taps are given; and,
          with `mutable`, `(that, {"batch_stats": new_stats})`.
        """
        edits = dict(edits or {})
        taps = tuple(taps)
        first = 0 if start is None else self._index(start, "start stage") + 1
        inner_taps: dict[int, list[str]] = {}  # stage index -> local point taps
        inner_edits: dict[int, dict[str, Callable[[Array], Array]]] = {}
        for name in taps:
            i, local = self._locate(name, "tap", inputs=True)
            if i < first - (start is not None and local is None):
                raise ValueError(
                    f"Cannot tap {name!r}: it runs before start={start!r}. Tap a stage from "
                    f"{start!r} on."
                )
            if local is not None:
                inner_taps.setdefault(i, []).append(local)
        for name in edits:
            i, local = self._locate(name, "edit")
            if i < first:
                raise ValueError(
                    f"Cannot edit {name!r}: it runs at or before start={start!r}; edit the input "
                    f"activation directly instead."
                )
            if local is not None:
                inner_edits.setdefault(i, {})[local] = edits[name]
        self._check_input(x, start)
        if mutable and not train:
            raise ValueError("mutable collections are only updated with train=True.")
        if train and not mutable:
            raise ValueError(
                "train=True updates batch statistics: pass mutable=['batch_stats'] and take "
                "(outputs, updates) back, as with Flax."
            )

        acts: dict[str, Array] = {}
        new_stats: dict[str, Any] = {}
        h = x
        if start is not None and start in taps:
            acts[start] = h
        for i, stage in enumerate(self.stage_list[first:], start=first):
            if stage.module is None:
                h = stage.fn(h)
            else:
                v = {
                    col: sub
                    for col in ("params", "batch_stats")
                    if (sub := get_path(variables.get(col, {}), stage.path)) is not None
                }
                kw = stage.kwargs(train)
                # Points are asked for only when named: otherwise the call is unchanged.
                if i in inner_taps or i in inner_edits:
                    kw.update(taps=tuple(inner_taps.get(i, ())), edits=inner_edits.get(i, {}))
                if train and "batch_stats" in v:
                    h, upd = stage.module.apply(v, h, mutable=["batch_stats"], **kw)
                    set_path(new_stats, stage.path, upd["batch_stats"])
                else:
                    h = stage.module.apply(v, h, **kw)
                if "taps" in kw:
                    h, inner = h
                    acts.update({f"{stage.name}.{k}": a for k, a in inner.items()})
            if stage.name in edits:
                h = edits[stage.name](h)
            if stage.name in taps:
                acts[stage.name] = h
        out = (h, acts) if taps else h
        if mutable:
            return out, {"batch_stats": new_stats}
        return out

    # ----------------------------------------------------------- variants
    def with_guided_relu(self) -> "Model":
        """The same model with every ReLU replaced by the guided-backprop ReLU."""
        return self._rebuild(guided=True)

    def with_dtype(self, dtype: Any) -> "Model":
        """The same model computing in `dtype` (e.g. jnp.bfloat16); parameters stay float32."""
        return self._rebuild(dtype=dtype)

    def _rebuild(self, **changes) -> "Model":
        if self.builder is None:
            raise ValueError(f"Model {self.name!r} has no builder to make variants with.")
        config = dict(self.config)
        config.update(changes)
        return self.builder(self.name, num_classes=self.num_classes,
                            in_channels=self.in_channels, **config)


# The model is static (hashable by its key): one compile per (model, input shape and dtype).
_init_compiled = jax.jit(Model._init_variables, static_argnums=0,
                         compiler_options={"xla_backend_optimization_level": 0})


def stage_shapes(model: Model, x_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Output shape of every stage for an input of shape `x_shape` (no allocation)."""
    x = jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    _, acts = jax.eval_shape(
        lambda v, x: model.apply(v, x, taps=model.stages), variables, x
    )
    return {k: tuple(a.shape) for k, a in acts.items()}
