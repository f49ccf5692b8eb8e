"""Building blocks shared by the architectures: activations and torchvision-style layers."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


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


def _conv_plain(lhs, rhs, strides, padding, dn):
    return lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=dn)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _loop_safe(lhs, rhs, strides, padding, dn):
    return _conv_plain(lhs, rhs, strides, padding, dn)


def _loop_safe_fwd(lhs, rhs, strides, padding, dn):
    return _conv_plain(lhs, rhs, strides, padding, dn), (lhs, rhs)


def _loop_safe_bwd(strides, padding, dn, res, ct):
    lhs, rhs = res
    # The same convolution written with the kernel's in/out axes physically swapped: its
    # transpose rule then convolves with the kernel in canonical order.
    o_ax, i_ax = dn.rhs_spec[0], dn.rhs_spec[1]
    perm = list(range(rhs.ndim))
    perm[o_ax], perm[i_ax] = perm[i_ax], perm[o_ax]
    dn_t = lax.ConvDimensionNumbers(dn.lhs_spec, (i_ax, o_ax) + tuple(dn.rhs_spec[2:]),
                                    dn.out_spec)
    rhs_t = jnp.transpose(rhs, perm)
    _, pull_x = jax.vjp(lambda l: _conv_plain(l, rhs_t, strides, padding, dn_t), lhs)
    _, pull_k = jax.vjp(lambda r: _conv_plain(lhs, r, strides, padding, dn), rhs)
    return pull_x(ct)[0], pull_k(ct)[0]


_loop_safe.defvjp(_loop_safe_fwd, _loop_safe_bwd)


def loop_safe_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                   precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated` whose input gradient stays fast inside XLA:CPU loops.

    Inside a scan/while body (integrated gradients, SmoothGrad, IBA steps) XLA:CPU runs the
    input-gradient convolution of JAX's transpose rule, whose kernel dims come swapped, through
    a slow generic path (about 20x slower; jax issue #12868). The backward pass here transposes
    the kernel explicitly (a cheap copy) so the gradient convolution has canonical dims. Values
    and gradients are identical; the unused kernel gradient is pruned by XLA when only input
    gradients are asked for. Grouped, dilated and string-padded convolutions fall back to lax.
    """
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    undilated = all(d is None or all(int(v) == 1 for v in d) for d in (lhs_dilation, rhs_dilation))
    simple = (feature_group_count == 1 and batch_group_count == 1 and undilated
              and isinstance(padding, (tuple, list))
              and precision is None and preferred_element_type is None)
    if not simple:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        batch_group_count, precision, preferred_element_type)
    return _loop_safe(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), dn)


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
        conv_general_dilated=loop_safe_conv,
        name=name,
    )


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torchvision's MaxPool2d(3, stride 2, padding 1)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes: [B, h, w, C] -> [B, C]."""
    return jnp.mean(x, axis=(1, 2))
