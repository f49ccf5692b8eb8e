"""Models by name: `get(name, *, num_classes, in_channels=1)` and `names()`."""

from __future__ import annotations

import functools
from typing import Any, Callable

from cxr_jax.models.base import Model
from cxr_jax.models.densenet import densenet
from cxr_jax.models.resnet import resnet

_BUILDERS: dict[str, Callable[..., Model]] = {
    "densenet121": functools.partial(densenet, block_config=(6, 12, 24, 16)),
    "densenet169": functools.partial(densenet, block_config=(6, 12, 32, 32)),
    "resnet18": functools.partial(resnet, block="basic", layers=(2, 2, 2, 2)),
    "resnet34": functools.partial(resnet, block="basic", layers=(3, 4, 6, 3)),
    "resnet50": functools.partial(resnet, block="bottleneck", layers=(3, 4, 6, 3)),
    "resnet152": functools.partial(resnet, block="bottleneck", layers=(3, 8, 36, 3)),
    # Tiny variants for tests and CPU quickstarts: same stage names, a fraction of the cost.
    "densenet_tiny": functools.partial(densenet, growth_rate=8, block_config=(2, 2, 2, 2),
                                       num_init_features=16, bn_size=2),
    "resnet_tiny": functools.partial(resnet, block="basic", layers=(1, 1, 1, 1),
                                     widths=(8, 16, 32, 64), stem=8),
    "resnet_tiny_bottleneck": functools.partial(resnet, block="bottleneck", layers=(1, 2, 1, 1),
                                                widths=(4, 8, 16, 32), stem=8),
    # The published architectures at full depth and a quarter of their width (~1/16 of the
    # multiply-adds): the same stages, units and map sizes (7 x 7 after the last stage at 224
    # px), so the papers' comparisons keep what they compared on a CPU budget
    # (experiments/configs/paper_*.py:reduced).
    "resnet34_slim": functools.partial(resnet, block="basic", layers=(3, 4, 6, 3),
                                       widths=(16, 32, 64, 128), stem=16),
    "resnet50_slim": functools.partial(resnet, block="bottleneck", layers=(3, 4, 6, 3),
                                       widths=(16, 32, 64, 128), stem=16),
    "resnet152_slim": functools.partial(resnet, block="bottleneck", layers=(3, 8, 36, 3),
                                        widths=(16, 32, 64, 128), stem=16),
    "densenet121_slim": functools.partial(densenet, growth_rate=8, block_config=(6, 12, 24, 16),
                                          num_init_features=16),
    "densenet169_slim": functools.partial(densenet, growth_rate=8, block_config=(6, 12, 32, 32),
                                          num_init_features=16),
    # The CPU quickstart's classifier: resnet_tiny at twice the width (~4x the compute); it finds
    # the phantoms' small nodules reliably where resnet_tiny often does not.
    "resnet_small": functools.partial(resnet, block="basic", layers=(1, 1, 1, 1),
                                      widths=(16, 32, 64, 128), stem=16),
}


def names() -> tuple[str, ...]:
    """All registered model names."""
    return tuple(_BUILDERS)


def get(name: str, *, num_classes: int, in_channels: int = 1, **overrides: Any) -> Model:
    """Builds a registered model.

    Args:
      name: one of `names()`.
      num_classes: outputs; 1 gives a regression head (raw score).
      in_channels: input channels (1 for radiographs, 3 for ImageNet weights).
      **overrides: builder options, e.g. guided=True (guided-backprop ReLUs) or
        dtype=jnp.bfloat16 (compute dtype; parameters stay float32).
    Returns:
      A `Model` (stage pipeline).
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown model {name!r}. Registered models: {', '.join(names())}.")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}.")
    return _BUILDERS[name](name, num_classes=num_classes, in_channels=in_channels, **overrides)
