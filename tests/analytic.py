"""Analytic stand-ins with the Model interface, shared by the attribution tests."""

import jax
import jax.numpy as jnp
import numpy as np

import cxr_jax.models as models


class Pipeline:
    """An analytic stand-in with the Model interface: stages are (name, f(variables, h, relu));
    `explain` is the layer it declares for layer-based methods (as real models do)."""

    def __init__(self, name, stage_fns, num_classes, in_channels, guided=False, explain=None):
        self.name, self._fns = name, tuple(stage_fns)
        self.num_classes, self.in_channels, self.guided = num_classes, in_channels, guided
        self.explain = explain
        self.layers = models.Layers(explain=explain) if explain else None

    @property
    def stages(self):
        return tuple(n for n, _ in self._fns)

    def with_guided_relu(self):
        return Pipeline(self.name, self._fns, self.num_classes, self.in_channels, guided=True,
                        explain=self.explain)

    def apply(self, variables, x, *, taps=(), edits=None, start=None):
        edits = edits or {}
        first = 0 if start is None else self.stages.index(start) + 1
        relu = models.guided_relu if self.guided else jax.nn.relu
        acts, h = {}, x
        for name, f in self._fns[first:]:
            h = f(variables, h, relu)
            if name in edits:
                h = edits[name](h)
            if name in taps:
                acts[name] = h
        return (h, acts) if taps else h


def numpy_init(model, x, seed=0):
    """He-normal kernels, unit scales, zero biases and identity batch statistics, drawn with
    numpy from the variables' shapes (jit-compiling the Flax initialisers is slow on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)

    def leaf(path, s):
        name = jax.tree_util.keystr(path[-1:])
        if "kernel" in name:
            fan_in = int(np.prod(s.shape[:-1]))
            return jnp.asarray(rng.normal(size=s.shape) * np.sqrt(2.0 / fan_in), s.dtype)
        if "scale" in name or "var" in name:
            return jnp.ones(s.shape, s.dtype)
        return jnp.zeros(s.shape, s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)
