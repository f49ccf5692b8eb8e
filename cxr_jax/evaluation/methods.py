"""Which methods a study runs, with which settings: the defaults, a selection, the preparation.

Nothing here knows a method by name: the registry says which methods suit the model's task,
their default and fast settings, which layer role they explain, and what they need estimated
from data (`cxr_jax.attribution.registry`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from cxr_jax import attribution


def default_methods(*, fast: bool = False, regression: bool = False,
                    cam_layer: str | None = None, with_needs: bool = True,
                    hparams: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Every registered method suited to the model, with METHODS.md's settings.

    Args:
      fast: the registry's cheaper settings (e.g. SmoothGrad 10 samples, IG 16 steps).
      regression: the model is a regressor (methods for classifiers are left out, and the other
        way round).
      cam_layer: the layer of the methods that explain the model's "explain" layer (the CAM
        family, Score-CAM, NormGrad); None keeps the model's own (DenseNet relu5, ResNet
        layer4). Any stage or model alias, e.g. "stride16".
      with_needs: include methods that need data-derived inputs (the IBA family); False when
        no images to estimate them from are at hand.
      hparams: {method: {hyperparameter: value}} over those settings, e.g. a study's own
        Integrated Gradients baseline; entries of methods left out (by `regression` or
        `with_needs`) are ignored.
    Returns:
      {name: (name, hparams)} in registration order (the order results list them and draw
      their keys in). Pairs, not a config's {"method": name, **hparams} form: SmoothGrad's own
      hyperparameter `method` names the method it smooths.
    Raises:
      ValueError: `hparams` names an unregistered method or a hyperparameter its method lacks.
    """
    hparams = dict(hparams or {})
    for name, values in hparams.items():
        if name not in attribution.names():
            raise ValueError(f"hparams names an unknown attribution method {name!r}; known: "
                             f"{', '.join(attribution.names())}.")
        unknown = set(values) - set(attribution.info(name).parameters())
        if unknown:
            raise ValueError(f"hparams of {name!r} has no hyperparameter(s) "
                             f"{', '.join(sorted(unknown))}; it takes "
                             f"{', '.join(attribution.info(name).parameters())}.")
    out = {}
    for info in attribution.infos():
        if not info.suits(regression=regression) or (info.needs and not with_needs):
            continue
        hp = info.settings(fast=fast)
        if cam_layer and info.layer == "explain":
            hp["layer"] = cam_layer
        hp.update(hparams.get(info.name, {}))
        out[info.name] = (info.name, hp)
    return out


def named_specs(names: Sequence[str], *, fast: bool = True, cam_layer: str | None = None
                ) -> dict[str, tuple[str, dict[str, Any]]]:
    """{name: (name, hparams)} for the named methods with the registry's settings (the fast
    ones by default); methods that explain the model's "explain" layer (the CAM family,
    Score-CAM, NormGrad) take `cam_layer` when it is given.

    Raises:
      ValueError: an unregistered name (the message lists the registered ones).
    """
    out = {}
    for name in names:
        if name not in attribution.names():
            raise ValueError(f"Unknown attribution method {name!r}; known: "
                             f"{', '.join(attribution.names())}.")
        info = attribution.info(name)
        hp = dict(info.settings(fast=fast))
        if cam_layer and info.layer == "explain":
            hp["layer"] = cam_layer
        out[name] = (name, hp)
    return out


def select(specs: Mapping[str, Any], wanted: str | Sequence[str]) -> dict[str, Any]:
    """The specs named in `wanted` ("all", or names / a comma-separated string), in its order.

    Raises:
      ValueError: a name that is not among the specs.
    """
    if isinstance(wanted, str):
        if wanted == "all":
            return dict(specs)
        wanted = [m.strip() for m in wanted.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in specs]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; available: {', '.join(specs)}.")
    return {m: specs[m] for m in wanted}


def method_of(spec: Any) -> str:
    """The method name of a spec: {"method": name, **hparams} or (name, hparams)."""
    return spec["method"] if isinstance(spec, Mapping) else spec[0]


def for_task(specs: Mapping[str, Any], *, regression: bool) -> dict[str, Any]:
    """The specs whose method explains this kind of model (registry's `task`)."""
    return {k: v for k, v in specs.items()
            if attribution.info(method_of(v)).suits(regression=regression)}


def settings(prepared: Mapping[str, attribution.Prepared]) -> dict[str, list]:
    """{name: [method, hparams without data-derived inputs]}, for results files."""
    return {k: [p.method, p.settings()] for k, p in prepared.items()}
