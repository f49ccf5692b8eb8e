"""Photo augmentation for training: a Grain random map that photographs some training images.

`PhotoAugment(probability)` replaces each training row's image, with that probability, by the
image under a transform and level drawn uniformly (every registered transform, the two recipes
included, at levels 1-4), optionally followed by the JPEG round trip. It runs inside the data
loader (`make_loader(..., transforms=[PhotoAugment(p)])`), where Grain hands every record its
own generator seeded by the sampler's seed and the record's position: the augmented stream is
deterministic, and a resumed run continues it exactly. Images arrive in the training scale
[-1024, 1024] and leave in it; masks are not carried (training rows have labels only).
"""

from __future__ import annotations

from typing import Sequence

import grain.python as grain
import numpy as np

from cxr_jax.data.photo._common import LEVELS
from cxr_jax.data.photo.recipes import jpeg
from cxr_jax.data.photo.registry import TRANSFORMS, names


class PhotoAugment(grain.RandomMapTransform):
    """Photographs a row's "image" with probability `probability` (see the module docstring).

    Args:
      probability: share of rows transformed, in [0, 1].
      transforms: the transform names to draw from (default: all registered).
      jpeg_probability: share of the transformed rows also re-encoded as JPEG (quality 75).
    """

    def __init__(self, probability: float, transforms: Sequence[str] | None = None,
                 jpeg_probability: float = 0.5):
        if not 0.0 <= probability <= 1.0 or not 0.0 <= jpeg_probability <= 1.0:
            raise ValueError(f"probabilities must lie in [0, 1], got {probability} and "
                             f"{jpeg_probability}.")
        self.names = tuple(names() if transforms is None else transforms)
        unknown = [n for n in self.names if n not in TRANSFORMS]
        if unknown or not self.names:
            raise ValueError(f"Unknown photo transform(s) {unknown}; known: {', '.join(names())}.")
        self.probability = float(probability)
        self.jpeg_probability = float(jpeg_probability)

    def random_map(self, element, rng: np.random.Generator):
        if rng.uniform() >= self.probability:
            return element
        image = np.asarray(element["image"], np.float32)
        unit = np.clip((image + 1024.0) / 2048.0, 0.0, 1.0)
        name = self.names[int(rng.integers(len(self.names)))]
        level = int(LEVELS[int(rng.integers(len(LEVELS)))])
        out = TRANSFORMS[name](unit, level, rng).image
        if rng.uniform() < self.jpeg_probability:
            out = jpeg(out)
        return {**element, "image": (out * 2048.0 - 1024.0).astype(image.dtype)}
