"""Attribution methods by name, with what each needs beyond the contract signature.

Every method is registered with the contract signature
`fn(model, variables, x, targets, *, layer=None, key=None, **hparams) -> [B, H, W]` and the
declarations that let studies use any method without knowing it:

  layer     the model role of its default layer(s), a field of `cxr_jax.models.Layers`
            ("explain" for the CAM family and NormGrad, "iba" and "multilayer_iba" for the IBA
            family), or None for methods of the input gradient;
  needs     data-derived inputs (`Need`) it takes as a keyword, one value per layer (the IBA
            family: feature statistics), which `cxr_jax.attribution.prepare` computes and
            caches;
  task      the models it explains: "any", "classification" or "regression";
  defaults  the hyperparameters a study uses when it names none (METHODS.md's settings);
  fast      cheaper settings for CPU runs (fewer samples or path points), over `defaults`.
  params    a dataclass whose fields are further keyword hyperparameters, for a method that
            takes them as **settings (the IBA family's optimisation settings)

`Method.parameters()` lists every hyperparameter a method takes with its default value (its
keyword arguments and `params` fields, minus layer, key and data-derived inputs), e.g. for a
config that lets each one be set from the command line.

`infos()` lists the methods in the order they were registered, which is the order studies
show (and draw their random keys for) them.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

TASKS = ("any", "classification", "regression")


@dataclasses.dataclass(frozen=True)
class Need:
    """A data-derived input of a method: estimated from images once per layer, cacheable.

    Attributes:
      keyword: the keyword argument the method takes it as (e.g. "stats"); for a method given
        several layers, a mapping {layer: value}, else the value itself.
      what: a short description for messages ("IBA feature statistics").
      estimate: (model, variables, batches, layer) -> value, with batches an iterable of
        image arrays [B, H, W, C].
      save, load: (path, value) -> None and path -> value, for a cache on disk.
      file: the cache file name, with {layer} in it.
    """

    keyword: str
    what: str
    estimate: Callable[[Any, Any, Any, str], Any]
    save: Callable[[str, Any], None]
    load: Callable[[str], Any]
    file: str


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method: its function and its declarations (see the module docstring)."""

    name: str
    fn: Callable
    layer: str | None = None
    needs: Need | None = None
    task: str = "any"
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fast: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    params: type | None = None

    def parameters(self, *, fast: bool = False) -> dict[str, Any]:
        """{name: default} of every hyperparameter (see the module docstring), with the
        registered defaults (and `fast` settings) applied."""
        skip = {"layer", "key"} | ({self.needs.keyword} if self.needs else set())
        out = {k: p.default for k, p in inspect.signature(self.fn).parameters.items()
               if p.kind == p.KEYWORD_ONLY and k not in skip}
        if self.params is not None:
            out.update({f.name: f.default for f in dataclasses.fields(self.params)})
        out.update(self.settings(fast=fast))
        return out

    def settings(self, *, fast: bool = False) -> dict:
        """The hyperparameters a study uses by default (`fast`: the cheaper ones)."""
        return {**self.defaults, **(self.fast if fast else {})}

    def suits(self, *, regression: bool) -> bool:
        """Whether the method explains a regressor (True) or a classifier (False)."""
        return self.task == "any" or self.task == ("regression" if regression else
                                                   "classification")


_METHODS: dict[str, Method] = {}


def register(name: str, *, layer: str | None = None, needs: Need | None = None,
             task: str = "any", defaults: Mapping[str, Any] | None = None,
             fast: Mapping[str, Any] | None = None, params: type | None = None
             ) -> Callable[[Callable], Callable]:
    """Decorator: registers `fn` under `name` with its declarations (module docstring)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")

    def wrap(fn: Callable) -> Callable:
        if name in _METHODS:
            raise ValueError(f"Attribution method {name!r} is registered twice.")
        _METHODS[name] = Method(name, fn, layer, needs, task, dict(defaults or {}),
                                dict(fast or {}), params)
        return fn

    return wrap


def info(name: str) -> Method:
    """The registration of method `name` (function and declarations)."""
    if name not in _METHODS:
        raise ValueError(
            f"Unknown attribution method {name!r}. Registered methods: {', '.join(names())}.")
    return _METHODS[name]


def get(name: str) -> Callable:
    """The method registered as `name`:
    `fn(model, variables, x, targets, *, layer=None, key=None, **hparams) -> [B, H, W]`."""
    return info(name).fn


def names() -> tuple[str, ...]:
    """All registered method names, sorted."""
    return tuple(sorted(_METHODS))


def infos() -> tuple[Method, ...]:
    """Every registered method, in the order of registration."""
    return tuple(_METHODS.values())
