r"""(b) CAM methods x architectures x findings: multi-Otsu box IoU against radiologists' boxes,
plus the agreement matrix between methods (seed 002's comparison on NIH ChestX-ray14 boxes).

    python -m experiments.paper --workdir runs/cam_boxes \
        --config=experiments/configs/paper_cam_boxes.py:reduced
    python -m experiments.paper --workdir runs/cam_boxes_full \
        --config=experiments/configs/paper_cam_boxes.py:full --config.train.data_dir=/data/nih

"reduced": the tiny DenseNet, ResNet and bottleneck ResNet on phantoms at 128 px (stand-ins for
the four architectures); "full": ResNet-50, ResNet-152, DenseNet-121, DenseNet-169 on NIH at 224.
"""

import ml_collections

from experiments.configs import evaluate as evaluate_config
from experiments.configs import train as train_config


def get_config(variant: str = "reduced") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.title = "Box IoU of CAM methods by architecture and finding (multi-Otsu boxes)"
    c.layout = "box_iou"
    c.methods = {
        "gradcam": {"method": "gradcam"},
        "guided_gradcam": {"method": "guided_gradcam"},
        "gradcam_plus_plus": {"method": "gradcam_plus_plus"},
        "scorecam": {"method": "scorecam"},
        "faster_scorecam": {"method": "faster_scorecam", "max_n": 10},
    }
    c.eval = evaluate_config.get_config("fast")
    c.eval.faithfulness = False
    c.eval.sensitivity_num_n = 0
    c.eval.iba_samples = 0
    c.findings = []
    if variant == "reduced":
        c.train = train_config.get_config("quickstart")
        # The budget these tables were measured with (the quickstart itself now trains longer).
        c.train.num_train, c.train.steps = 10000, 3000
        c.models = ["resnet_tiny", "resnet_tiny_bottleneck", "densenet_tiny"]
        c.note = ("Reduced run on phantoms at 128 px with tiny stand-ins for ResNet-50/152 and "
                  "DenseNet-121/169; numbers are not comparable to the paper's.")
    elif variant == "full":
        c.train = train_config.get_config("default")
        c.train.dataset = "nih"
        c.models = ["resnet50", "resnet152", "densenet121", "densenet169"]
        c.eval.dataset = "nih"
        c.eval.num_test = 880
        c.eval.max_per_finding = None
        c.note = "NIH ChestX-ray14: the 880 images with radiologists' boxes (984 boxes)."
    else:
        raise ValueError(f"Unknown variant {variant!r}: reduced or full.")
    return c
