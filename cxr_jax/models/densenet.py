"""DenseNet (Huang et al. 2017) as a stage pipeline, named as torchvision names it.

Stages: conv0 norm0 relu0 pool0 denseblock1 transition1 denseblock2 transition2 denseblock3
transition3 denseblock4 norm5 relu5 avgpool classifier. `norm5` is where torchvision's
`features` ends; `relu5` is the rectified final feature map that torchvision's forward computes
as `F.relu(features(x))` (TorchXRayVision's `features2`), the map Grad-CAM is defined on and the
model's default explanation layer; `avgpool` pools it. The variables nest as torchvision's
state_dict (`features/denseblock1/denselayer1/conv1/kernel`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cxr_jax.models.base import Layers, Model, Stage
from cxr_jax.models.layers import (BatchNorm, Dense, avg_pool_2x2, conv, global_avg_pool,
                                   max_pool_3x3_s2, relu_fn)


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3; returns only the `growth_rate` new channels."""

    growth_rate: int
    bn_size: int
    guided: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        relu = relu_fn(self.guided)
        bn = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        h = conv(self.bn_size * self.growth_rate, 1, name="conv1", dtype=self.dtype)(
            relu(bn("norm1")(x)))
        return conv(self.growth_rate, 3, padding=1, name="conv2", dtype=self.dtype)(
            relu(bn("norm2")(h)))


class DenseBlock(nn.Module):
    """`num_layers` dense layers, each reading the concatenation of all earlier outputs."""

    num_layers: int
    growth_rate: int
    bn_size: int
    guided: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        feats = x
        for j in range(self.num_layers):
            new = DenseLayer(self.growth_rate, self.bn_size, self.guided, self.dtype,
                             name=f"denselayer{j + 1}")(feats, train)
            feats = jnp.concatenate([feats, new.astype(feats.dtype)], axis=-1)
        return feats


class Transition(nn.Module):
    """BN-ReLU, then conv1x1 halving the channels and 2x2 average pooling (in the cheaper
    order, see below)."""

    features: int
    guided: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = relu_fn(self.guided)(
            BatchNorm(use_running_average=not train, dtype=self.dtype, name="norm")(x))
        # A 1x1 convolution and 2x2 average pooling are both linear and act on different axes,
        # so they commute: pooling first gives torchvision's result (up to rounding) with a
        # quarter of the convolution's work, forward and backward.
        h = avg_pool_2x2(h)
        return conv(self.features, 1, name="conv", dtype=self.dtype)(h)


def densenet(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 1,
    growth_rate: int = 32,
    block_config: Sequence[int] = (6, 12, 24, 16),
    num_init_features: int = 64,
    bn_size: int = 4,
    guided: bool = False,
    dtype: Any = jnp.float32,
) -> Model:
    """Builds a DenseNet stage pipeline (torchvision layout, NHWC)."""
    relu = relu_fn(guided)
    f = ("features",)
    stages = [
        Stage("conv0", f + ("conv0",), conv(num_init_features, 7, 2, 3, name="conv0", dtype=dtype),
              mode="none"),
        Stage("norm0", f + ("norm0",), BatchNorm(dtype=dtype, name="norm0"), mode="batchnorm"),
        Stage("relu0", fn=relu),
        Stage("pool0", fn=max_pool_3x3_s2),
    ]
    features = num_init_features
    for i, n in enumerate(block_config, start=1):
        block = f"denseblock{i}"
        stages.append(Stage(block, f + (block,),
                            DenseBlock(n, growth_rate, bn_size, guided, dtype, name=block)))
        features += n * growth_rate
        if i != len(block_config):
            trans = f"transition{i}"
            features //= 2
            stages.append(Stage(trans, f + (trans,),
                                Transition(features, guided, dtype, name=trans)))
    stages += [
        Stage("norm5", f + ("norm5",), BatchNorm(dtype=dtype, name="norm5"), mode="batchnorm"),
        Stage("relu5", fn=relu),
        Stage("avgpool", fn=global_avg_pool),
        Stage("classifier", ("classifier",),
              Dense(num_classes, dtype=dtype, bias_init=nn.initializers.zeros,
                    name="classifier"), mode="none"),
    ]
    config = dict(growth_rate=growth_rate, block_config=tuple(block_config),
                  num_init_features=num_init_features, bn_size=bn_size, guided=guided, dtype=dtype)
    blocks = tuple(f"denseblock{i}" for i in range(1, len(block_config) + 1))
    layers = Layers(explain="relu5", iba=blocks[2], multilayer_iba=blocks[:3], stride16=blocks[2])
    return Model(name, tuple(stages), num_classes, in_channels, min_size=32,
                 config=tuple(sorted(config.items(), key=lambda kv: kv[0])), layers=layers,
                 builder=densenet)

