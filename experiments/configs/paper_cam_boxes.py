r"""(b) CAM methods x architectures x findings: multi-Otsu box IoU against radiologists' boxes,
plus the agreement matrix between methods (seed 002's comparison on NIH ChestX-ray14 boxes).

    python -m experiments.paper --workdir runs/cam_boxes \
        --config=experiments/configs/paper_cam_boxes.py:reduced
    python -m experiments.paper --workdir runs/cam_boxes_full \
        --config=experiments/configs/paper_cam_boxes.py:full --config.train.data_dir=/data/nih

"reduced": ResNet-50, ResNet-152, DenseNet-121 and DenseNet-169 at full depth and a quarter of
their width (`*_slim`), trained on phantoms at 224 px, so the explained maps are 7 x 7 as in the
paper (500 steps of 32 each); "gpu": the same four at full width and 3,000 steps; "full": the four
at full width on NIH at 224.

experiments/results/cam_boxes_reduced holds the measured ":reduced" run (all four models, without
the per-image overlays); copied to the workdir, a rerun reuses every model and only re-assembles
the table.
"""

import ml_collections

from experiments.configs import evaluate as evaluate_config
from experiments.configs import papers
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
    c.paper = {"gradcam": "0.18", "guided_gradcam": "0.34", "gradcam_plus_plus": "0.23",
               "scorecam": "0.31", "faster_scorecam": "0.15"}  # DenseNet, vs radiologists
    c.claims = [
        {"kind": "agreement", "model": "densenet121_slim",
         "claim": "The methods agree with each other more than with the radiologists",
         "paper": "DenseNet: box IoU 0.72-0.88 between methods, 0.15-0.34 against radiologists"},
        {"kind": "best", "metric": "box_iou", "methods": ["guided_gradcam"],
         "model": "densenet121_slim",
         "claim": "Guided Grad-CAM's boxes are closest to the radiologists' (DenseNet)",
         "paper": "Guided Grad-CAM 0.34, Score-CAM 0.31, Grad-CAM++ 0.23, Grad-CAM 0.18, "
                  "Faster Score-CAM 0.15"},
        {"kind": "greater", "metric": "box_iou", "a": "scorecam", "b": "faster_scorecam",
         "model": "densenet121_slim",
         "claim": "Faster Score-CAM (10 channels) loses box IoU against Score-CAM",
         "paper": "Score-CAM 0.31 vs Faster Score-CAM 0.15"},
        {"kind": "best_model", "metric": "box_iou", "models": ["densenet"],
         "claim": "DenseNet gives the best results of the four architectures",
         "paper": "DenseNet-121/169 above ResNet-50/152"},
    ]
    c.eval = evaluate_config.get_config("fast")
    c.eval.faithfulness = False
    c.eval.sensitivity_num_n = 0
    c.eval.iba_samples = 0
    c.findings = []
    if variant in ("reduced", "gpu"):
        c.train = train_config.get_config("quickstart")
        c.train.image_size = 224
        # 500 steps each (2,000 over the four): 1,000 each took about 3 h on this CPU.
        c.train.num_train, c.train.steps = 10000, 500
        c.train.eval_every = c.train.checkpoint_every = 250
        c.models = ("resnet50_slim", "resnet152_slim", "densenet121_slim", "densenet169_slim")
        c.eval.max_per_finding = 24
        c.note = ("Reduced run on phantoms at 224 px: the four architectures at full depth and a "
                  "quarter of their width, explained at their last stage (7 x 7, as in the "
                  "paper). Boxes come from the phantoms' finding masks, not from radiologists; "
                  "the paper's column is its DenseNet figure against radiologists on NIH, the "
                  "claim to check, not a number to match.")
    elif variant == "full":
        c.train = train_config.get_config("default")
        c.train.dataset = "nih"
        c.models = ("resnet50", "resnet152", "densenet121", "densenet169")
        c.eval.dataset = "nih"
        c.eval.num_test = 880
        c.eval.max_per_finding = None
        c.note = "NIH ChestX-ray14: the 880 images with radiologists' boxes (984 boxes)."
        for claim in c.claims:
            claim["data"] = "NIH"
            if claim.get("model") == "densenet121_slim":
                claim["model"] = "densenet121"
    else:
        raise ValueError(f"Unknown variant {variant!r}: reduced, gpu or full.")
    return papers.full_width(c) if variant == "gpu" else c
