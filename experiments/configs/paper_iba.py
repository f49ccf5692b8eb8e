r"""(c) The IBA family against baselines: effective heat ratio, insertion and deletion AUC and
sensitivity-N (Khakzar et al. 2021, CheXplain-IBA: NIH ChestX-ray14 and BrixIA).

    python -m experiments.paper --workdir runs/iba \
        --config=experiments/configs/paper_iba.py:reduced
    python -m experiments.paper --workdir runs/iba_full \
        --config=experiments/configs/paper_iba.py:full --config.train.data_dir=/data/nih

Classifiers are explained with IBA, Inverse IBA and Multi-layer IBA; the severity regressor
(the entry "model@phantoms_severity" or "model@brixia") with Regression IBA. A regressor's
insertion and deletion curves follow its raw predicted score, so their AUCs are in score units
(severity points), not probabilities.
"""

import ml_collections

from experiments.configs import evaluate as evaluate_config
from experiments.configs import train as train_config


def get_config(variant: str = "reduced") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.title = "IBA family vs baselines: EHR, insertion, deletion, sensitivity-N"
    c.layout = "faithfulness"
    c.methods = {
        "iba": {"method": "iba"},
        "inverse_iba": {"method": "inverse_iba"},
        "multilayer_iba": {"method": "multilayer_iba"},
        "regression_iba": {"method": "regression_iba", "loss": "push_up"},
        "gradient": {"method": "gradient"},
        "integrated_gradients": {"method": "integrated_gradients", "steps": 16},
        "smoothgrad": {"method": "smoothgrad", "n": 10},
        "gradcam": {"method": "gradcam"},
    }
    c.eval = evaluate_config.get_config("fast")
    c.findings = []
    if variant == "reduced":
        c.train = train_config.get_config("quickstart")
        # The budget these tables were measured with (the quickstart itself now trains longer).
        c.train.num_train, c.train.steps = 10000, 3000
        c.models = ["densenet_tiny", "densenet_tiny@phantoms_severity"]
        c.eval.iba_samples = 1000
        c.note = ("Reduced run: tiny DenseNet on phantoms at 128 px (classifier) and as a "
                  "severity regressor; numbers are not comparable to the paper's. The "
                  "regressor's insertion/deletion AUCs are in severity points.")
    elif variant == "full":
        c.train = train_config.get_config("default")
        c.train.dataset = "nih"
        c.models = ["densenet121"]
        c.eval.dataset = "nih"
        c.eval.num_test = 880
        c.eval.max_per_finding = None
        c.eval.iba_samples = 10000
        c.note = ("NIH boxes; add 'densenet121@brixia' to models with a BrixIA folder for "
                  "Regression IBA.")
    else:
        raise ValueError(f"Unknown variant {variant!r}: reduced or full.")
    return c
