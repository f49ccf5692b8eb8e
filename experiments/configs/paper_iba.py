r"""(c) The IBA family against baselines: effective heat ratio, insertion and deletion AUC and
sensitivity-N (Khakzar et al. 2021, CheXplain-IBA: NIH ChestX-ray14 and BrixIA).

    python -m experiments.paper --workdir runs/iba \
        --config=experiments/configs/paper_iba.py:reduced
    python -m experiments.paper --workdir runs/iba_full \
        --config=experiments/configs/paper_iba.py:full --config.train.data_dir=/data/nih \
        --config.data_dirs.brixia=/data/brixia

Classifiers are explained with IBA, Inverse IBA and Multi-layer IBA; the severity regressor
(the entry "model@phantoms_severity" or "model@brixia") with Regression IBA. A regressor's
insertion and deletion curves follow its raw predicted score, so their AUCs are in score units
(severity points), not probabilities.

"reduced": DenseNet-121 at full depth and a quarter of its width (`densenet121_slim`) on
phantoms at 224 px, 1,000 steps each for the classifier and the severity regressor; "gpu": the
same at full width and 3,000 steps; "full": DenseNet-121 on NIH and, as the regressor, on BrixIA
(`--config.data_dirs.brixia`; without BrixIA pass `--config.models='("densenet121",)'`).
"""

import ml_collections

from experiments.configs import evaluate as evaluate_config
from experiments.configs import papers
from experiments.configs import train as train_config


def get_config(variant: str = "reduced") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.title = "IBA family vs baselines: EHR, insertion, deletion, sensitivity-N"
    c.layout = "faithfulness"
    c.methods = {
        "iba": {"method": "iba"},
        "inverse_iba": {"method": "inverse_iba"},
        # the reference's 10 noise draws per step (the library's default is 5, half the cost)
        "multilayer_iba": {"method": "multilayer_iba", "samples": 10},
        "regression_iba": {"method": "regression_iba", "loss": "push_up"},
        "gradient": {"method": "gradient"},
        "integrated_gradients": {"method": "integrated_gradients", "steps": 16},
        "smoothgrad": {"method": "smoothgrad", "n": 10},
        "gradcam": {"method": "gradcam"},
    }
    c.claims = [
        {"kind": "greater", "metric": "ehr", "a": "inverse_iba", "b": "iba",
         "model": "densenet121_slim",
         "claim": "Inverse IBA highlights all informative regions: more of its heat lies on "
                  "the finding than IBA's (EHR)",
         "paper": "Inverse IBA finds regions IBA misses (Khakzar et al. 2021)"},
        {"kind": "greater", "metric": "box_recall", "a": "inverse_iba", "b": "iba",
         "model": "densenet121_slim",
         "claim": "Inverse IBA's maps cover more of the finding than IBA's (box recall: the "
                  "share of the finding's box inside the method's multi-Otsu box)",
         "paper": "Inverse IBA finds regions IBA misses (Khakzar et al. 2021)"},
        {"kind": "greater", "metric": "pointing_game", "a": "multilayer_iba", "b": "iba",
         "model": "densenet121_slim",
         "claim": "Multi-layer IBA's finer maps point at the finding more often than IBA's",
         "paper": "Multi-layer IBA gives finer-grained maps"},
        {"kind": "greater", "metric": "box_iou", "a": "multilayer_iba", "b": "iba",
         "model": "densenet121_slim",
         "claim": "Multi-layer IBA's finer maps give tighter boxes than IBA's",
         "paper": "Multi-layer IBA gives finer-grained maps"},
        {"kind": "best", "metric": "ehr", "methods": ["regression_iba"],
         "model": "densenet121_slim_phantoms_severity",
         "claim": "Regression IBA on a severity regressor puts its heat on the regions that "
                  "carry the score (opacity)",
         "paper": "Regression IBA localises the lung zones behind BrixIA scores"},
    ]
    c.eval = evaluate_config.get_config("fast")
    c.findings = []
    if variant in ("reduced", "gpu"):
        c.train = train_config.get_config("quickstart")
        c.train.image_size = 224
        c.train.num_train, c.train.steps = 10000, 1000
        c.models = ("densenet121_slim", "densenet121_slim@phantoms_severity")
        c.eval.iba_samples = 1000
        c.eval.max_per_finding = 24
        # The curves and sensitivity-N cost more than the seven maps (about 310 forward passes
        # per image): 16 curve steps and sensitivity-N at 5 x 5 keep them to about 400. Measured
        # with these settings: 2-2.8 min per batch of 16 on the 2-core CPU, about 40 minutes
        # for the classifier's 16 batches.
        c.eval.curve_steps = 16
        c.eval.sensitivity_num_n = 5
        c.eval.sensitivity_masks = 5
        c.note = ("Reduced run on phantoms at 224 px: DenseNet-121 at full depth and a quarter "
                  "of its width as a classifier and as a severity regressor; IBA at "
                  "denseblock3 (14 x 14), Multi-layer IBA at denseblocks 1-3, as in the paper. "
                  "Insertion/deletion at 16 steps, sensitivity-N at 5 sizes x 5 masks. "
                  "The regressor's insertion/deletion AUCs are in severity points.")
    elif variant == "full":
        c.train = train_config.get_config("default")
        c.train.dataset = "nih"
        c.models = ("densenet121", "densenet121@brixia")
        c.data_dirs = {"brixia": ""}  # --config.data_dirs.brixia=/data/brixia
        c.eval.dataset = "nih"
        c.eval.num_test = 880
        c.eval.max_per_finding = None
        c.eval.iba_samples = 10000
        c.note = ("NIH ChestX-ray14 with its boxes for the classifier; BrixIA for the severity "
                  "regressor and Regression IBA.")
        for claim in c.claims:
            claim["data"] = "NIH"
            claim["model"] = claim["model"].replace("densenet121_slim_phantoms_severity",
                                                    "densenet121_brixia")
            claim["model"] = claim["model"].replace("densenet121_slim", "densenet121")
    else:
        raise ValueError(f"Unknown variant {variant!r}: reduced, gpu or full.")
    return papers.full_width(c) if variant == "gpu" else c
