r"""Evaluation config: which methods, which data, which metrics.

    python -m experiments.evaluate --workdir runs/eval --checkpoint runs/quickstart
    python -m experiments.evaluate --workdir runs/eval_nih --checkpoint runs/nih \
        --config.dataset=nih --config.data_dir=/data/nih --config.methods=gradcam,iba

Variants: "default" (every method, METHODS.md defaults), "fast" (every method with fewer
samples and steps, for CPU: SmoothGrad 10 samples, IG 16 steps from the black image,
sensitivity-N 10 x 10) and "quickstart" (the first look: six methods, the pointing game with
intervals, the effective heat ratio and box IoU; no insertion/deletion or sensitivity-N, which
the "fast" variant, the README's next command, adds; what the quickstart's first run shows).
"""

import ml_collections


# Integrated Gradients from the black image. METHODS.md's b = 0 is mid-grey in the models'
# [-1024, 1024] range, so x - b is negative over the dark lungs: there a finding that brightens
# the lung (consolidation, opacity, a mass) scores negative while the bright mediastinum scores
# positive, and the map's peak lands on the mediastinum. From -1024, x - b >= 0 everywhere and
# a pixel's sign is its path-averaged gradient's. The quickstart's phantom models, two training
# seeds, 24 held-out images per finding: pointing game 0.937 and 0.922 from black against 0.891
# and 0.875 from 0 (consolidation 0.75-0.79 against 0.63-0.67). The "default" variant keeps b = 0.
def _black_baseline() -> dict:
    return {"integrated_gradients": {"baseline": -1024.0}}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = ""             # "" = the dataset the checkpoint was trained on
    c.data_dir = ""
    c.num_test = 200           # held-out images considered
    c.methods = "all"          # comma-separated output names of default_methods, or "all"
    c.hparams = ml_collections.ConfigDict()  # {method: {hyperparameter: value}} over the
                               # registry's settings (default_methods' `hparams`)
    c.cam_layer = ""           # CAM family + NormGrad layer: "" = DenseNet norm5 / ResNet layer4,
                               # "stride16" = denseblock3 / layer3, or any stage name
    c.fast = False
    c.tolerance_at_224 = 15.0  # pointing-game tolerance, scaled with the image size
    c.max_per_finding = 50
    c.batch_size = 16
    c.faithfulness = True
    c.pixels_per_step = 25     # insertion/deletion: pixels per step (the CXR reference) ...
    c.curve_steps = 0          # ... or, when > 0, this many steps over the budget instead
    c.fraction = 0.5
    c.blur_sigma = 10.0
    c.sensitivity_num_n = 50
    c.sensitivity_masks = 30
    c.iba_samples = 1000       # images for the IBA feature statistics
    c.gallery_per_finding = 1
    c.seed = 0
    c.devices = 0              # batches sharded over this many devices; 0 = every device
    if variant == "fast":
        c.fast = True
        # The tiny CPU models end at stride 32 (a 4x4 map at 128 px): CAMs there cannot point at
        # a nodule. layer3 (stride 16) is the finest layer the CAM literature also uses.
        c.cam_layer = "stride16"
        c.sensitivity_num_n = 10
        c.sensitivity_masks = 10
        c.max_per_finding = 24
        c.curve_steps = 32
        c.hparams = _black_baseline()
    elif variant == "quickstart":
        c.fast = True
        c.cam_layer = "stride16"
        c.methods = "gradient,integrated_gradients,gradcam,normgrad,iba,multilayer_iba"
        c.max_per_finding = 24
        # Insertion/deletion at 8 steps were 38 s of a 394 s first run on a slow CPU (forward
        # 56 ms): 96 forward passes per image and finding for six methods. The first look
        # leads with localisation; the next command (fast) draws the curves at 32 steps.
        c.faithfulness = False
        c.sensitivity_num_n = 0
        c.gallery_per_finding = 2
        c.hparams = _black_baseline()
    elif variant != "default":
        raise ValueError(f"Unknown variant {variant!r}: default, fast or quickstart.")
    return c
