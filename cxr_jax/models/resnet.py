"""ResNet (He et al. 2016, torchvision's v1.5: stride in the 3x3 conv) as a stage pipeline.

Stages: conv1 bn1 relu maxpool, then every residual unit (`layer1.0`, `layer1.1`, ...) followed by
its layer (`layer1`, the same tensor as its last unit), ..., layer4, avgpool, fc. Variables nest as
torchvision's state_dict (`layer1/0/conv1/kernel`, `layer1/0/downsample/0/kernel`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cxr_jax.models.base import Layers, Model, Stage
from cxr_jax.models.layers import BatchNorm, conv, global_avg_pool, max_pool_3x3_s2, relu_fn


class Downsample(nn.Module):
    """torchvision's `downsample = Sequential(conv1x1, BatchNorm)`, children named "0" and "1"."""

    features: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = conv(self.features, 1, self.stride, name="0", dtype=self.dtype)(x)
        return BatchNorm(use_running_average=not train, dtype=self.dtype, name="1")(h)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut."""

    planes: int
    stride: int = 1
    downsample: bool = False
    guided: bool = False
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        relu = relu_fn(self.guided)
        bn = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        h = relu(bn("bn1")(conv(self.planes, 3, self.stride, 1, name="conv1", dtype=self.dtype)(x)))
        h = bn("bn2")(conv(self.planes, 3, 1, 1, name="conv2", dtype=self.dtype)(h))
        if self.downsample:
            x = Downsample(self.planes, self.stride, self.dtype, name="downsample")(x, train)
        return relu(h + x)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with an identity (or projected) shortcut."""

    planes: int
    stride: int = 1
    downsample: bool = False
    guided: bool = False
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        relu = relu_fn(self.guided)
        bn = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        h = relu(bn("bn1")(conv(self.planes, 1, name="conv1", dtype=self.dtype)(x)))
        h = relu(bn("bn2")(conv(self.planes, 3, self.stride, 1, name="conv2", dtype=self.dtype)(h)))
        h = bn("bn3")(conv(self.planes * 4, 1, name="conv3", dtype=self.dtype)(h))
        if self.downsample:
            x = Downsample(self.planes * 4, self.stride, self.dtype, name="downsample")(x, train)
        return relu(h + x)


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
                                cls(planes, stride, down, guided, dtype, name=str(j))))
            inplanes = planes * cls.expansion
        stages.append(Stage(layer, fn=_identity))
    stages += [
        Stage("avgpool", fn=global_avg_pool),
        Stage("fc", ("fc",), nn.Dense(num_classes, dtype=dtype, name="fc"), mode="none"),
    ]
    config = dict(block=block, layers=tuple(layers), widths=tuple(widths), stem=stem,
                  guided=guided, dtype=dtype)
    declared = Layers(explain="layer4", iba="layer3", multilayer_iba=("layer1", "layer2", "layer3"),
                      stride16="layer3", units=tuple(units))
    return Model(name, tuple(stages), num_classes, in_channels, min_size=32,
                 config=tuple(sorted(config.items(), key=lambda kv: kv[0])), layers=declared,
                 builder=resnet)
