"""One call from (method name, hyperparameters, model, variables, images) to a ready method.

Studies, the benchmark and scripts never special-case a method: they call `prepare` (or
`prepare_all` for several) and get a `Prepared` method whose hyperparameters are complete:

  * layer names are resolved by the model (`"stride16"`, `"layer4.last"` become stages; a list
    of layers loses duplicates, e.g. a one-unit ResNet's layer4.last is layer4.0);
  * a method that needs data-derived inputs (the IBA family: feature statistics of its layer or
    layers, `registry.Need`) gets them, estimated from `images` once per layer and kept in a
    `Cache` (in memory, and in a folder when one is given, so a rerun loads them);
  * a method that needs its layer to know what to estimate gets the model's declared layer for
    its role (`Model.layers`) when the caller named none.

Example:
  >>> ig = prepare("integrated_gradients", {"steps": 16}, model, variables)
  >>> iba = prepare("iba", {}, model, variables, images=train_images, cache=Cache("runs/x"))
  >>> maps = jax.jit(lambda v, x, t, k: iba(model, v, x, t, key=k))(variables, x, t, key)
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np

from cxr_jax.attribution import registry
from cxr_jax.models import default_layer

# Images per batch when statistics are estimated from an array of images.
ESTIMATION_BATCH = 64


class Prepared(NamedTuple):
    """A method with complete hyperparameters; unpacks as (method, hparams).

    Calling it runs the method: `prepared(model, variables, x, targets, key=...)`.
    """

    method: str
    hparams: dict

    @property
    def fn(self) -> Callable:
        """The method with its hyperparameters bound (the contract signature)."""
        return functools.partial(registry.get(self.method), **self.hparams)

    def __call__(self, model, variables, x, targets, **overrides):
        return self.fn(model, variables, x, targets, **overrides)

    def settings(self) -> dict:
        """The hyperparameters without data-derived inputs, for reports."""
        needs = registry.info(self.method).needs
        return {k: v for k, v in self.hparams.items() if needs is None or k != needs.keyword}


class Cache:
    """Data-derived inputs by (need, layer), in memory and, given a folder, on disk.

    One cache belongs to one model, its variables and one input size: the values are
    statistics of that model's activations.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = None if directory is None else os.fspath(directory)
        self._values: dict[tuple[str, str], Any] = {}

    def get(self, need: registry.Need, layer: str, estimate: Callable[[], Any]) -> Any:
        """The cached value, else `estimate()` (saved to the folder, if any)."""
        key = (need.file, layer)
        if key in self._values:
            return self._values[key]
        path = None
        if self.directory is not None:
            path = os.path.join(self.directory, need.file.format(layer=layer))
        if path is not None and os.path.exists(path):
            value = need.load(path)
        else:
            value = estimate()
            if path is not None:
                os.makedirs(self.directory, exist_ok=True)
                need.save(path, value)
        self._values[key] = value
        return value


def resolve_layers(model, layer):
    """Layer names as the model's stages (aliases resolved; a list deduplicated, in order).
    Points inside units ("layer4.2.conv2", `Model.points`) and NormGrad's "convs" /
    "<stage>.convs" are kept as they are: the method resolves them."""
    if layer is None:
        return None
    if not hasattr(model, "layer"):
        return layer if isinstance(layer, str) else list(dict.fromkeys(layer))
    points = set(getattr(model, "points", ()) or ())

    def resolve(name):
        if isinstance(name, str) and (name in points or name == "convs"
                                      or name.endswith(".convs")):
            return name
        return model.layer(name)

    if isinstance(layer, str):
        return resolve(layer)
    return list(dict.fromkeys(resolve(name) for name in layer))


class _Images:
    """A source of estimation images, materialised at most once: an array [N, H, W, C], an
    iterable of batches, or a zero-argument callable returning either."""

    def __init__(self, source: Any):
        self._source, self._batches = source, None

    def batches(self, what: str) -> list:
        if self._batches is None:
            source = self._source() if callable(self._source) else self._source
            if source is None:
                raise ValueError(f"{what}: pass images= (training-distribution images to "
                                 f"estimate them from) or give them in the hyperparameters.")
            if hasattr(source, "shape"):
                source = np.asarray(source)
                source = [source[i:i + ESTIMATION_BATCH]
                          for i in range(0, len(source), ESTIMATION_BATCH)]
            self._batches = list(source)
        return self._batches


def _estimate(need: registry.Need, model, variables, images: _Images, what: str, layer: str):
    return need.estimate(model, variables, images.batches(what), layer)


def _prepare(method: str, hparams: Mapping[str, Any], model, variables, images: _Images,
             cache: Cache) -> Prepared:
    info = registry.info(method)
    hp = dict(hparams or {})
    if "layer" in hp:
        hp["layer"] = resolve_layers(model, hp["layer"])
    need = info.needs
    if need is not None and need.keyword not in hp:
        if hp.get("layer") is None:
            if info.layer is None:
                raise ValueError(f"{method} needs a layer to estimate {need.what} at; pass "
                                 f"layer=...")
            hp["layer"] = resolve_layers(model, default_layer(model, info.layer))
        layers = [hp["layer"]] if isinstance(hp["layer"], str) else list(hp["layer"])
        what = f"{method} needs {need.what} of {', '.join(layers)}"
        values = {layer: cache.get(need, layer, functools.partial(
            _estimate, need, model, variables, images, what, layer)) for layer in layers}
        hp[need.keyword] = (values[hp["layer"]] if isinstance(hp["layer"], str)
                            else {layer: values[layer] for layer in layers})
    return Prepared(method, hp)


def prepare(method: str, hparams: Mapping[str, Any] | None, model, variables,
            images: Any = None, *, cache: Cache | None = None) -> Prepared:
    """A ready method: hyperparameters completed for this model (see the module docstring).

    Args:
      method: a registered method name.
      hparams: its hyperparameters (layer, steps, ...); may be empty.
      model, variables: the model the method will explain.
      images: where to estimate data-derived inputs from, when the method needs them: an image
        array [N, H, W, C] (taken 64 at a time), an iterable of image batches, or a callable
        returning either (called only if something must be estimated).
      cache: where estimated inputs are kept (default: a fresh in-memory `Cache`).
    Returns:
      `Prepared(method, hparams)`; call it with the contract signature.
    Raises:
      ValueError: unknown method or layer, or a need with no images to estimate it from.
    """
    return _prepare(method, hparams or {}, model, variables, _Images(images), cache or Cache())


def prepare_all(specs: Mapping[str, Any], model, variables, images: Any = None, *,
                cache: Cache | None = None) -> dict[str, Prepared]:
    """`prepare` for several methods sharing one cache and one image source.

    Args:
      specs: {output name: {"method": registered name, **hparams}} (a config's form) or
        {output name: (method, hparams)}. One method may appear under several names with
        different settings.
      model, variables, images, cache: as `prepare`.
    Returns:
      {output name: Prepared}, in the order of `specs`.
    """
    cache = cache or Cache()
    source = _Images(images)
    out = {}
    for name, spec in specs.items():
        if isinstance(spec, Mapping):
            spec = dict(spec)
            method = spec.pop("method")
        else:
            method, spec = spec
        out[name] = _prepare(method, spec, model, variables, source, cache)
    return out


def data_inputs(prepared: Iterable[Prepared]) -> dict[str, list]:
    """{need keyword: [value, ...]}: every data-derived input the prepared methods hold, one
    per layer (e.g. the statistics a noise check should look at)."""
    out: dict[str, dict[int, Any]] = {}
    for p in prepared:
        need = registry.info(p.method).needs
        if need is None or need.keyword not in p.hparams:
            continue
        value = p.hparams[need.keyword]
        values = value.values() if isinstance(value, Mapping) else [value]
        for v in values:
            out.setdefault(need.keyword, {})[id(v)] = v
    return {k: list(v.values()) for k, v in out.items()}
