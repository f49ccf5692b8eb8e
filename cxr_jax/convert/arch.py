"""Recognising the architecture a state_dict holds from its keys and shapes alone.

Owns `describe_state_dict` (DenseNet block configuration, growth rate and width; ResNet block
kind, depths and widths; number of classes and input channels) and `infer_arch`, which matches
that description against the models registered in `cxr_jax.models`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from cxr_jax import models
from cxr_jax.convert.spelling import normalize_keys


def describe_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any] | None:
    """The architecture a torchvision-named state_dict describes, read from its keys and shapes.

    Returns:
      {"family": "densenet", "block_config", "growth_rate", "num_init_features", "bn_size",
       "num_classes", "in_channels"} or {"family": "resnet", "block", "layers", "widths", "stem",
       "num_classes", "in_channels"}; None when neither pattern is found.
    """
    weights, _ = normalize_keys(state_dict)
    shape = lambda k: tuple(np.shape(weights[k])) if k in weights else None
    dense = {}
    for k in weights:
        m = re.match(r"^features\.denseblock(\d+)\.denselayer(\d+)\.", k)
        if m:
            b, layer = int(m.group(1)), int(m.group(2))
            dense[b] = max(dense.get(b, 0), layer)
    if dense and shape("features.conv0.weight") and shape("classifier.weight"):
        g = shape("features.denseblock1.denselayer1.conv2.weight")
        c1 = shape("features.denseblock1.denselayer1.conv1.weight")
        if g is None or c1 is None:
            return None
        return dict(family="densenet", block_config=tuple(dense[b] for b in sorted(dense)),
                    growth_rate=g[0], num_init_features=shape("features.conv0.weight")[0],
                    bn_size=c1[0] // g[0], num_classes=shape("classifier.weight")[0],
                    in_channels=shape("features.conv0.weight")[1])
    units = {}
    for k in weights:
        m = re.match(r"^layer(\d+)\.(\d+)\.", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            units[i] = max(units.get(i, 0), j + 1)
    if units and shape("conv1.weight") and shape("fc.weight"):
        widths = tuple((shape(f"layer{i}.0.conv1.weight") or (0,))[0] for i in sorted(units))
        return dict(family="resnet",
                    block="bottleneck" if any(k.endswith(".conv3.weight") for k in weights)
                    else "basic",
                    layers=tuple(units[i] for i in sorted(units)), widths=widths,
                    stem=shape("conv1.weight")[0], num_classes=shape("fc.weight")[0],
                    in_channels=shape("conv1.weight")[1])
    return None


def infer_arch(state_dict: Mapping[str, Any]) -> str | None:
    """The registered model name whose structure the state_dict has, or None."""
    desc = describe_state_dict(state_dict)
    if desc is None:
        return None
    for name in models.names():
        if not name.startswith(desc["family"]):
            continue
        config = dict(models.get(name, num_classes=1).config)
        if all(config.get(k) == v for k, v in desc.items()
               if k not in ("family", "num_classes", "in_channels")):
            return name
    return None
