"""Building blocks shared by the architectures: activations and torchvision-style layers."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass is the guided-backprop rule.

    Forward: max(x, 0). Backward: the incoming gradient g passes only where the forward input
    was positive AND g itself is positive: dx = g * [x > 0] * [g > 0] (Springenberg et al. 2015).
    """
    return jnp.maximum(x, 0)


def _guided_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


def relu_fn(guided: bool) -> Callable[[jax.Array], jax.Array]:
    """The ReLU a model uses: plain or guided."""
    return guided_relu if guided else nn.relu


# torchvision's BatchNorm2d: eps 1e-5, momentum 0.1 (= Flax momentum 0.9).
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, *, name: str,
         dtype: Any = jnp.float32) -> nn.Conv:
    """A bias-free convolution with torchvision's explicit symmetric padding."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=False,
        kernel_init=nn.initializers.kaiming_normal(),
        dtype=dtype,
        name=name,
    )


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torchvision's MaxPool2d(3, stride 2, padding 1)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes: [B, h, w, C] -> [B, C]."""
    return jnp.mean(x, axis=(1, 2))
