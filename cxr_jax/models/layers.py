"""Building blocks shared by the architectures: activations and torchvision-style layers."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
from flax.core import meta as flax_meta
import jax
import jax.numpy as jnp
from jax import lax


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass is the guided-backprop rule.

    Forward: max(x, 0), as `relu` computes it. Backward: the incoming gradient g passes only
    where the forward input was positive AND g itself is positive:
    dx = g * [x > 0] * [g > 0] (Springenberg et al. 2015). The backward keeps the mask
    [x > 0], a byte per value, not x.
    """
    return _clamp_relu(x)


def _guided_fwd(x):
    return _clamp_relu(x), x > 0


def _guided_bwd(positive, g):
    return (jnp.where(positive & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_jvp
def relu(x: jax.Array) -> jax.Array:
    """max(x, 0): `jax.nn.relu`'s values and derivative (0 at 0), bit for bit.

    `jax.nn.relu` wraps the same maximum in a `jax.jit`, which tracing a DenseNet-121 meets
    about 120 times per pass (twice that under differentiation): each a nested function to
    trace and lower. Without the wrapper, and with `BatchNorm` below, a method's first call
    (trace, lower, compile) takes 0.5-2 s less (BUILD.md, "Benchmark").

    Written as clamp(0, x, inf), which gives max(x, 0)'s bits (NaN stays NaN, -0 becomes 0):
    under differentiation XLA:CPU handed the maximum's broadcast zeros to the XNNPACK fusion
    of each DenseNet transition as a materialised tensor, the size of the block's output
    (26 MB at 224 px and batch 8 for the first), written and read on every call. The clamp's
    scalar bounds are not; the input gradient ran 2-6% faster in two interleaved comparisons
    (BUILD.md, "Benchmark").
    """
    return _clamp_relu(x)


def _clamp_relu(x: jax.Array) -> jax.Array:
    return lax.clamp(jnp.zeros((), x.dtype), x, jnp.full((), jnp.inf, x.dtype))


relu.defjvps(lambda g, ans, x: lax.select(x > 0, g, lax.full_like(g, 0)))


def relu_fn(guided: bool) -> Callable[[jax.Array], jax.Array]:
    """The ReLU a model uses: plain or guided."""
    return guided_relu if guided else relu


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
    gradients are asked for. 1x1, stride-1, unpadded convolutions are computed as matrix
    products instead (about twice as fast on XLA:CPU, forward and backward). Grouped, dilated
    and string-padded convolutions fall back to lax.
    """
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    undilated = all(d is None or all(int(v) == 1 for v in d) for d in (lhs_dilation, rhs_dilation))
    simple = (feature_group_count == 1 and batch_group_count == 1 and undilated
              and isinstance(padding, (tuple, list))
              and precision is None and preferred_element_type is None)
    if simple and _is_pointwise(rhs, dn, window_strides, padding):
        return _pointwise(lhs, rhs, dn)
    if not simple:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        batch_group_count, precision, preferred_element_type)
    return _loop_safe(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), dn)


def _is_pointwise(rhs, dn, strides, padding) -> bool:
    spatial = [rhs.shape[d] for d in dn.rhs_spec[2:]]
    return (all(k == 1 for k in spatial) and all(int(s) == 1 for s in strides)
            and all(tuple(p) == (0, 0) for p in padding))


def _pointwise(lhs, rhs, dn):
    """A 1x1, stride-1, unpadded convolution as a matrix product over the channel axis."""
    w = jnp.squeeze(rhs, axis=tuple(dn.rhs_spec[2:]))          # [O, I] or [I, O] by layout
    o_first = dn.rhs_spec[0] < dn.rhs_spec[1]
    c_in = dn.lhs_spec[1]
    out = lax.dot_general(lhs, w, (((c_in,), (1 if o_first else 0,)), ((), ())))
    # dot_general puts the output channels last; move them where the output layout wants them.
    return jnp.moveaxis(out, -1, dn.out_spec[1])


class BatchNorm(nn.BatchNorm):
    """torchvision's BatchNorm2d (eps 1e-5, momentum 0.1 = Flax's 0.9) as Flax's BatchNorm.

    Training mode is Flax's. In eval mode (running statistics), on float32 inputs and
    parameters with the features last, the normalisation `(x - mean) * (rsqrt(var + eps) *
    scale) + bias` is written here in `lax` operations: the same operations in the same order
    as Flax's, so the same bits, without the dozen nested `jnp` functions Flax's version
    traces per layer, and with the parameters' shape check done without tracing their
    initialisers. With `relu`, this took a DenseNet-121 Multi-layer IBA's first call
    (224 px, batch 8, 2-core CPU) from 15-18 s to 13-15 s. Other cases (bf16, a mask,
    no scale or bias) fall back to Flax's code.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        eval_mode = nn.merge_param("use_running_average", self.use_running_average,
                                   use_running_average)
        f32 = jnp.dtype(jnp.float32)
        if not (eval_mode and mask is None and self.axis in (-1, x.ndim - 1)
                and self.use_scale and self.use_bias and self.force_float32_reductions
                and x.dtype == f32 and jnp.dtype(self.param_dtype) == f32
                and (self.dtype is None or jnp.dtype(self.dtype) == f32)):
            return super().__call__(x, use_running_average, mask=mask)
        shape = (x.shape[-1],)
        mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, f32), shape).value
        var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, f32), shape).value
        scale = self._param("scale", self.scale_init, shape)
        bias = self._param("bias", self.bias_init, shape)
        mul = lax.mul(lax.rsqrt(lax.add(var, f32.type(self.epsilon))), scale)
        spread = lambda v: lax.broadcast_in_dim(v, x.shape, (x.ndim - 1,))
        return lax.add(lax.mul(lax.sub(x, spread(mean)), spread(mul)), spread(bias))

    def _param(self, name: str, init: Callable, shape: tuple[int, ...]) -> jax.Array:
        value = existing_param(self, name, (shape,))
        return self.param(name, init, shape, self.param_dtype) if value is None else value


def existing_param(module: nn.Module, name: str, init_args: tuple) -> jax.Array | None:
    """The module's parameter `name` if it exists, its shape checked against `init_args[0]`
    (the shape its initialiser is given); None when Flax's own `param` should handle it (the
    parameter is being created, or is boxed in axis metadata, or the arguments hold no shape).

    Flax's `param` checks an existing parameter by tracing its initialiser (`jax.eval_shape`)
    at every apply, about 5 ms per layer here: 0.5-1 s of every DenseNet-121 method's first
    call. The check here compares the shape directly and raises the same kind of error.
    """
    shape = init_args[0] if init_args else None
    if not (isinstance(shape, tuple) and module.has_variable("params", name)):
        return None
    value = module.get_variable("params", name)
    if isinstance(value, flax_meta.AxisMetadata):
        return None
    if jnp.shape(value) != shape:
        where = "/".join(module.scope.path) or module.name or ""
        raise ValueError(f"{type(module).__name__} {where}: parameter {name!r} has shape "
                         f"{jnp.shape(value)}, but this layer, for its input and settings, "
                         f"needs {shape}; the variables do not belong to this model.")
    return value


class _ExistingParams:
    """Mixin for Flax layers: existing parameters are fetched with `existing_param`, without
    tracing their initialisers; values and errors as Flax's."""

    @nn.nowrap
    def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
        value = None if init_kwargs else existing_param(self, name, init_args)
        if value is None:
            return super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)
        return value


class Conv(_ExistingParams, nn.Conv):
    """`nn.Conv` with `_ExistingParams`."""


class Dense(_ExistingParams, nn.Dense):
    """`nn.Dense` with `_ExistingParams`."""


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, *, name: str,
         dtype: Any = jnp.float32) -> Conv:
    """A bias-free convolution with torchvision's explicit symmetric padding."""
    return Conv(
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


def _pool_windows(x: jax.Array) -> tuple[list[jax.Array], int, int]:
    """The nine strided views of a 3x3/stride-2/pad-1 pooling: views[3*di + dj][:, i, j] is the
    input at row 2i + di - 1, column 2j + dj - 1 (-inf outside the image)."""
    b, h, w, c = x.shape
    oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    views = [lax.slice(xp, (0, di, dj, 0), (b, di + 2 * oh - 1, dj + 2 * ow - 1, c), (1, 2, 2, 1))
             for di in range(3) for dj in range(3)]
    return views, oh, ow


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torchvision's MaxPool2d(3, stride 2, padding 1), with a cheap exact backward pass."""
    views, _, _ = _pool_windows(x)
    return functools.reduce(jnp.maximum, views)


def _max_pool_fwd(x):
    views, oh, ow = _pool_windows(x)
    y = functools.reduce(jnp.maximum, views)
    first = jnp.full(y.shape, 8, jnp.int8)
    for k in range(7, -1, -1):
        first = jnp.where(views[k] == y, jnp.int8(k), first)
    return y, (first, x.shape)


def _max_pool_bwd(res, g):
    first, shape = res
    b, h, w, c = shape
    oh, ow = first.shape[1:3]
    k = first.astype(jnp.int32)
    rows = 2 * jnp.arange(oh, dtype=jnp.int32)[None, :, None, None] + k // 3 - 1
    cols = 2 * jnp.arange(ow, dtype=jnp.int32)[None, None, :, None] + k % 3 - 1
    bi = jnp.arange(b, dtype=jnp.int32)[:, None, None, None]
    ci = jnp.arange(c, dtype=jnp.int32)[None, None, None, :]
    flat = ((bi * h + rows) * w + cols) * c + ci
    dx = jnp.zeros((b * h * w * c,), g.dtype).at[flat.reshape(-1)].add(g.reshape(-1), mode="drop")
    return (dx.reshape(shape),)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """torchvision's AvgPool2d(2, stride 2) (odd trailing rows/columns dropped), as a reshape
    and mean: its gradient is a broadcast rather than a padded reduce-window."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes: [B, h, w, C] -> [B, C]."""
    return jnp.mean(x, axis=(1, 2))
