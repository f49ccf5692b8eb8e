"""The catalogue of published weights the converter knows by name.

Owns the sources a file may come from, the ImageNet statistics torchvision models expect,
TorchXRayVision's 18 output names and, for each released TorchXRayVision file, its architecture,
input size, trained outputs and operating points. Pure data plus one lookup; imports nothing
else from cxr_jax.
"""

from __future__ import annotations

import pathlib
from typing import Any

SOURCES = ("torchvision", "torchxrayvision")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# TorchXRayVision's default output order (`xrv.datasets.default_pathologies`).
XRV_PATHOLOGIES = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
    "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass",
    "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)

_nan = float("nan")


def _labels(present: str) -> tuple[str, ...]:
    """The 18 default pathologies with the outputs a model was not trained on blanked ("")."""
    keep = set(present.split("|"))
    return tuple(p if p in keep else "" for p in XRV_PATHOLOGIES)


# The 11 CheXpert findings, which the CheXpert and MIMIC-CXR models were trained on.
_CHEX_LABELS = _labels("Atelectasis|Consolidation|Pneumothorax|Edema|Effusion|Pneumonia|"
                       "Cardiomegaly|Lung Lesion|Fracture|Lung Opacity|Enlarged Cardiomediastinum")


def _densenet121(data: str, labels: tuple[str, ...], op_threshs: tuple[float, ...]) -> dict:
    """A released 224-pixel DenseNet-121, its file named after the data sets it learned from."""
    return dict(arch="densenet121", size=224, labels=labels,
                file=f"{data}-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
                op_threshs=op_threshs)


# Published TorchXRayVision weights: output labels ("" = never trained, the output is noise),
# operating-point thresholds (NaN = none), native input size and the released file name. Values
# from torchxrayvision/models.py (`model_urls`).
XRV_WEIGHTS: dict[str, dict[str, Any]] = {
    "densenet121-res224-all": _densenet121(
        "nih-pc-chex-mimic_ch-google-openi-kaggle", XRV_PATHOLOGIES,
        (0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074,
         0.0022490358, 0.010060724, 0.103246614, 0.056810737, 0.026791653,
         0.050318155, 0.023985857, 0.01939503, 0.042889766, 0.053369623,
         0.035975814, 0.20204692, 0.05015312)),
    "densenet121-res224-nih": _densenet121(
        "nih", XRV_PATHOLOGIES[:14] + ("",) * 4,
        (0.039117552, 0.0034529066, 0.11396341, 0.0057298196, 0.00045666535,
         0.0018880932, 0.012037827, 0.038744126, 0.0037213727, 0.014730946,
         0.016149804, 0.054241467, 0.037198864, 0.0004403434, _nan, _nan, _nan, _nan)),
    "densenet121-res224-pc": _densenet121(
        "pc", XRV_PATHOLOGIES[:14] + ("", "Fracture", "", ""),
        (0.031012505, 0.013347598, 0.081435576, 0.001262615, 0.002587246,
         0.0035944257, 0.0023071, 0.055412333, 0.044385884, 0.042766232, 0.043258056,
         0.037629247, 0.005658899, 0.0091741895, _nan, 0.026507627, _nan, _nan)),
    "densenet121-res224-chex": _densenet121(
        "chex", _CHEX_LABELS,
        (0.1988969, 0.05710573, _nan, 0.0531293, 0.1435217, _nan, _nan, 0.27212676,
         0.07749717, _nan, 0.19712369, _nan, _nan, _nan, 0.09932402, 0.09273402,
         0.3270967, 0.10888247)),
    "densenet121-res224-rsna": _densenet121(
        "kaggle", _labels("Pneumonia|Lung Opacity"),
        (_nan,) * 8 + (0.13486601,) + (_nan,) * 7 + (0.13511065, _nan)),
    "densenet121-res224-mimic_nb": _densenet121(
        "mimic_nb", _CHEX_LABELS,
        (0.08558747, 0.011884617, _nan, 0.0040595434, 0.010733786, _nan, _nan,
         0.118761964, 0.022924708, _nan, 0.06358637, _nan, _nan, _nan, 0.022143636,
         0.017476924, 0.1258702, 0.014020768)),
    "densenet121-res224-mimic_ch": _densenet121(
        "mimic_ch", _CHEX_LABELS,
        (0.09121389, 0.010573786, _nan, 0.005023008, 0.003698257, _nan, _nan,
         0.08001232, 0.037242252, _nan, 0.05006329, _nan, _nan, _nan, 0.019866971,
         0.03823637, 0.11303808, 0.0069147074)),
    "resnet50-res512-all": dict(
        arch="resnet50", size=512, labels=XRV_PATHOLOGIES,
        file="pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
        op_threshs=(0.51570356, 0.50444704, 0.53787947, 0.50723547, 0.5025118, 0.5035252,
                    0.5038076, 0.51862943, 0.5078151, 0.50724894, 0.5056339, 0.510706, 0.5053923,
                    0.5020846, _nan, 0.5080557, 0.5138526, _nan)),
}


def known_xrv_weights(path: pathlib.Path, xrv_weights: str | None) -> dict[str, Any] | None:
    """The catalogue entry named `xrv_weights`, else the one whose released file `path` is.

    Raises:
      ValueError: `xrv_weights` is given but not in the catalogue.
    """
    if xrv_weights is not None:
        if xrv_weights not in XRV_WEIGHTS:
            raise ValueError(f"Unknown TorchXRayVision weights {xrv_weights!r}; known: "
                             f"{', '.join(XRV_WEIGHTS)}.")
        return XRV_WEIGHTS[xrv_weights]
    for info in XRV_WEIGHTS.values():
        if path.stem == pathlib.Path(info["file"]).stem:
            return info
    return None
