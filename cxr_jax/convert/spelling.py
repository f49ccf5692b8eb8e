"""Key spellings: other tools' names for torchvision's state_dict keys.

Owns `normalize_keys`, which strips the prefix wrappers add (`module.` from DataParallel, `model.`
from TorchXRayVision's ResNet, `_orig_mod.` from torch.compile), renames the legacy DenseNet
spelling `denselayerN.norm.1` to `denselayerN.norm1`, and sets non-weight buffers such as
TorchXRayVision's `op_threshs` apart. `arch`, `keys` and `checkpoint` read keys through it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

_LEGACY_DENSE = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\."
                           r"(weight|bias|running_mean|running_var|num_batches_tracked)$")
_PREFIXES = ("module.", "_orig_mod.", "model.")
_EXTRAS = ("op_threshs",)


def normalize_keys(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rewrites other tools' key spellings into torchvision's and splits off non-weights.

    Strips a prefix every weight key shares (`module.`, `_orig_mod.`, `model.`), renames the
    legacy DenseNet spelling `denselayerN.norm.1.weight` -> `denselayerN.norm1.weight`.

    Args:
      state_dict: {torch key: array}.
    Returns:
      (weights, extras): extras holds `op_threshs` when present.
    """
    extras, weights = {}, {}
    for k, v in state_dict.items():
        base = k.rsplit(".", 1)[-1]
        if base in _EXTRAS:
            extras[base] = v
        else:
            weights[k] = v
    changed = True
    while changed and weights:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in weights):
                weights = {k[len(p):]: v for k, v in weights.items()}
                changed = True
    renamed = {}
    for k, v in weights.items():
        m = _LEGACY_DENSE.match(k)
        renamed[m.group(1) + m.group(2) + "." + m.group(3) if m else k] = v
    return renamed, extras
