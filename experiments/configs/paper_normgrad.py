r"""(a) Foreign objects (Object-CXR): pointing game of NormGrad and the saliency baselines.

Seed: NormGrad localises foreign objects with pointing game 0.862 on the Object-CXR test set
(ResNet-34 at 600x600, 25 px tolerance; single layer layer4.2, combined layers layer2.0,
layer3.0, layer4.0, layer4.2).

    python -m experiments.paper --workdir runs/normgrad \
        --config=experiments/configs/paper_normgrad.py:reduced
    python -m experiments.paper --workdir runs/normgrad_full \
        --config=experiments/configs/paper_normgrad.py:full --config.train.data_dir=/data/object-CXR

"reduced": the tiny ResNet (one unit per layer, so layer4.last = layer4.0) trained on phantoms at
128 px; "full": ResNet-34 on Object-CXR at 600 px.

The bias variant at layer4.last is flat by construction: that tap is the last unit's output,
which only global average pooling follows, so the gradient there is the same at every location
(||g_u|| constant), the map's argmax is pixel (0, 0), and min-max normalising the constant map
gives zeros, which zero the combined product too. The table reports what that gives. Inside
the unit the bias variant is defined (`layer="layer4.0.conv2"`, a convolution's output before
its batch norm, where TorchRay's hooks read; see `cxr_jax.attribution.normgrad`); these tables do
not use those points yet.
"""

import ml_collections

from experiments.configs import evaluate as evaluate_config
from experiments.configs import train as train_config

VARIANTS = ("conv1x1", "scaling", "bias", "conv3x3", "selective")
COMBINED = ["layer2.0", "layer3.0", "layer4.0", "layer4.last"]


def get_config(variant: str = "reduced") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.title = "Foreign objects: pointing game (Ozer & Oksuz 2021 layout)"
    c.layout = "pointing_game"
    methods = {}
    for v in VARIANTS:
        methods[f"normgrad_{v}_single"] = {"method": "normgrad", "variant": v,
                                           "layer": "layer4.last"}
        methods[f"normgrad_{v}_combined"] = {"method": "normgrad", "variant": v,
                                             "layer": COMBINED}
    methods["input_x_gradient"] = {"method": "input_x_gradient"}
    methods["guided_backprop"] = {"method": "guided_backprop"}
    methods["guided_gradcam"] = {"method": "guided_gradcam", "layer": "layer4"}
    methods["gradcam"] = {"method": "gradcam", "layer": "layer4"}
    c.methods = methods
    c.eval = evaluate_config.get_config("fast")
    c.eval.tolerance_at_224 = 25 * 224 / 600
    c.eval.faithfulness = False
    c.eval.sensitivity_num_n = 0
    c.eval.iba_samples = 0
    if variant == "reduced":
        c.train = train_config.get_config("quickstart")
        # The budget these tables were measured with (the quickstart itself now trains longer).
        c.train.num_train, c.train.steps = 10000, 3000
        c.models = ["resnet_tiny"]
        c.findings = ["foreign_object"]
        c.eval.max_per_finding = 64
        c.note = ("Reduced run: tiny ResNet trained on phantoms at 128 px; the object is the "
                  "phantom's foreign-object finding. Numbers are not comparable to the paper's. "
                  "NormGrad's bias variant at layer4.last is flat by construction (only global "
                  "average pooling follows that tap), hence its zero rows.")
    elif variant == "full":
        c.train = train_config.get_config("default")
        c.train.dataset = "object_cxr"
        c.train.image_size = 600
        c.train.batch_size = 16
        c.models = ["resnet34"]
        c.findings = ["Foreign Object"]
        c.eval.dataset = "object_cxr"
        c.eval.num_test = 1000
        c.eval.max_per_finding = None
        c.note = ("Object-CXR dev set, positives only (images with at least one object). "
                  "NormGrad's bias variant at layer4.last is flat by construction (only global "
                  "average pooling follows that tap).")
    else:
        raise ValueError(f"Unknown variant {variant!r}: reduced or full.")
    return c
