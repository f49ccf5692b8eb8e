"""ResNet (He et al. 2016, torchvision's v1.5: stride in the 3x3 conv) as a stage pipeline.

Stages: conv1 bn1 relu maxpool, then every residual unit (`layer1.0`, `layer1.1`, ...) followed by
its layer (`layer1`, the same tensor as its last unit), ..., layer4, avgpool, fc. Variables nest as
torchvision's state_dict (`layer1/0/conv1/kernel`, `layer1/0/downsample/0/kernel`).

Points (`cxr_jax.models.base.Point`): every convolution inside a unit, named as torchvision
names the module: `layer4.1.conv1`, `layer4.1.conv2` (and `conv3` in bottleneck units),
`layer4.0.downsample.0` (the shortcut's 1x1 convolution). Tapping a point gives the convolution's
output *before* its batch norm (so before the residual add and the ReLU), editing it changes that
output, and `<point>.input` taps the convolution's input. These are the two tensors a PyTorch
hook on the `nn.Conv2d` module sees, the forward input and the output gradient, which is where
TorchRay's NormGrad reads a convolution (the virtual identity layer on the module's output, and
the exact weight gradient, the outer product of output gradient and unfolded input, of
`norm_grad_proper`). Taps and edits are keyword arguments of the unit, not `sow`/`perturb`: a
unit asked for none runs exactly the code it always ran, so the plain forward pass compiles to
the same program.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cxr_jax.models.base import Layers, Model, Point, Stage
from cxr_jax.models.layers import (BatchNorm, Dense, conv, global_avg_pool, max_pool_3x3_s2,
                                   relu_fn)


def _plain(name, layer, x):
    return layer(x)


def _prober(taps, edits, acts):
    """`run(name, layer, x)`: applies a convolution, recording its input ("<name>.input") and
    output ("<name>") into `acts` when tapped and applying the edit of `name` to its output."""
    def run(name, layer, x):
        if f"{name}.input" in taps:
            acts[f"{name}.input"] = x
        y = layer(x)
        if name in edits:
            y = edits[name](y)
        if name in taps:
            acts[name] = y
        return y
    return run


def _check_points(cls, taps, edits, stride, downsample):
    valid = {p.name for p in cls.points(stride, downsample)}
    bad = [t for t in (*taps, *edits) if t not in valid and not (
        t in taps and t.endswith(".input") and t[: -len(".input")] in valid)]
    if bad:
        raise ValueError(f"{cls.__name__} has no point(s) {bad}; valid: {sorted(valid)}.")


def _unit_probe(unit, taps, edits):
    """(asked, probe, acts) for a unit called with `taps`/`edits` (both None: not asked, the
    plain probe, and the unit runs exactly its old code)."""
    asked = taps is not None or edits is not None
    taps, edits, acts = tuple(taps or ()), dict(edits or {}), {}
    if asked:
        _check_points(type(unit), taps, edits, unit.stride, unit.downsample)
    return asked, (_prober(taps, edits, acts) if asked else _plain), acts


class Downsample(nn.Module):
    """torchvision's `downsample = Sequential(conv1x1, BatchNorm)`, children named "0" and "1"."""

    features: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, probe=_plain):
        """`probe(name, conv, x)` applies the convolution "0" (the unit's point hook)."""
        h = probe("downsample.0", conv(self.features, 1, self.stride, name="0",
                                       dtype=self.dtype), x)
        return BatchNorm(use_running_average=not train, dtype=self.dtype, name="1")(h)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut.

    Called as `(x, train)` it returns the unit's output. Called with `taps` (local point names,
    "conv1" ... "downsample.0", or "<point>.input") and/or `edits` ({point: f}) it returns
    `(y, {local name: activation})` (see the module docstring for what a point is).
    """

    planes: int
    stride: int = 1
    downsample: bool = False
    guided: bool = False
    dtype: Any = jnp.float32
    expansion = 1

    @staticmethod
    def points(stride: int, downsample: bool) -> tuple[Point, ...]:
        """The unit's convolutions in torchvision's module order, with their geometry."""
        return (Point("conv1", 3, stride, 1), Point("conv2", 3, 1, 1)) + (
            (Point("downsample.0", 1, stride, 0),) if downsample else ())

    @nn.compact
    def __call__(self, x, train: bool = False, taps=None, edits=None):
        asked, probe, acts = _unit_probe(self, taps, edits)
        relu = relu_fn(self.guided)
        bn = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        h = relu(bn("bn1")(probe("conv1", conv(self.planes, 3, self.stride, 1, name="conv1",
                                                dtype=self.dtype), x)))
        h = bn("bn2")(probe("conv2", conv(self.planes, 3, 1, 1, name="conv2", dtype=self.dtype),
                            h))
        if self.downsample:
            x = Downsample(self.planes, self.stride, self.dtype, name="downsample")(x, train,
                                                                                    probe)
        y = relu(h + x)
        return (y, acts) if asked else y


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with an identity (or projected) shortcut.

    Taps and edits of its points as `BasicBlock`'s (points conv1, conv2, conv3, downsample.0).
    """

    planes: int
    stride: int = 1
    downsample: bool = False
    guided: bool = False
    dtype: Any = jnp.float32
    expansion = 4

    @staticmethod
    def points(stride: int, downsample: bool) -> tuple[Point, ...]:
        """The unit's convolutions in torchvision's module order, with their geometry."""
        return (Point("conv1", 1, 1, 0), Point("conv2", 3, stride, 1),
                Point("conv3", 1, 1, 0)) + (
            (Point("downsample.0", 1, stride, 0),) if downsample else ())

    @nn.compact
    def __call__(self, x, train: bool = False, taps=None, edits=None):
        asked, probe, acts = _unit_probe(self, taps, edits)
        relu = relu_fn(self.guided)
        bn = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        h = relu(bn("bn1")(probe("conv1", conv(self.planes, 1, name="conv1", dtype=self.dtype),
                                 x)))
        h = relu(bn("bn2")(probe("conv2", conv(self.planes, 3, self.stride, 1, name="conv2",
                                                dtype=self.dtype), h)))
        h = bn("bn3")(probe("conv3", conv(self.planes * 4, 1, name="conv3", dtype=self.dtype),
                            h))
        if self.downsample:
            x = Downsample(self.planes * 4, self.stride, self.dtype, name="downsample")(
                x, train, probe)
        y = relu(h + x)
        return (y, acts) if asked else y


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _identity(h):
    return h


def resnet(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 1,
    block: str = "bottleneck",
    layers: Sequence[int] = (3, 4, 6, 3),
    widths: Sequence[int] = (64, 128, 256, 512),
    stem: int = 64,
    guided: bool = False,
    dtype: Any = jnp.float32,
) -> Model:
    """Builds a ResNet stage pipeline (torchvision layout, NHWC)."""
    cls = _BLOCKS[block]
    stages = [
        Stage("conv1", ("conv1",), conv(stem, 7, 2, 3, name="conv1", dtype=dtype), mode="none"),
        Stage("bn1", ("bn1",), BatchNorm(dtype=dtype, name="bn1"), mode="batchnorm"),
        Stage("relu", fn=relu_fn(guided)),
        Stage("maxpool", fn=max_pool_3x3_s2),
    ]
    inplanes = stem
    units = []
    for i, (n, planes) in enumerate(zip(layers, widths), start=1):
        layer = f"layer{i}"
        units.append((layer, tuple(f"{layer}.{j}" for j in range(n))))
        for j in range(n):
            stride = 2 if (j == 0 and i > 1) else 1
            down = j == 0 and (stride != 1 or inplanes != planes * cls.expansion)
            stages.append(Stage(f"{layer}.{j}", (layer, str(j)),
                                cls(planes, stride, down, guided, dtype, name=str(j)),
                                points=cls.points(stride, down)))
            inplanes = planes * cls.expansion
        stages.append(Stage(layer, fn=_identity))
    stages += [
        Stage("avgpool", fn=global_avg_pool),
        Stage("fc", ("fc",), Dense(num_classes, dtype=dtype, name="fc"), mode="none"),
    ]
    config = dict(block=block, layers=tuple(layers), widths=tuple(widths), stem=stem,
                  guided=guided, dtype=dtype)
    declared = Layers(explain="layer4", iba="layer3", multilayer_iba=("layer1", "layer2", "layer3"),
                      stride16="layer3", units=tuple(units))
    return Model(name, tuple(stages), num_classes, in_channels, min_size=32,
                 config=tuple(sorted(config.items(), key=lambda kv: kv[0])), layers=declared,
                 builder=resnet)
