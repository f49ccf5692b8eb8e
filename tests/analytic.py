"""Analytic stand-ins with the Model interface, shared by the attribution tests."""

import jax

import cxr_jax.models as models


class Pipeline:
    """An analytic stand-in with the Model interface: stages are (name, f(variables, h, relu))."""

    def __init__(self, name, stage_fns, num_classes, in_channels, guided=False):
        self.name, self._fns = name, tuple(stage_fns)
        self.num_classes, self.in_channels, self.guided = num_classes, in_channels, guided

    @property
    def stages(self):
        return tuple(n for n, _ in self._fns)

    def with_guided_relu(self):
        return Pipeline(self.name, self._fns, self.num_classes, self.in_channels, guided=True)

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
