r"""Config of the semantics study (cxr_jax.semantics.study): five phantom models, dissected.

    python -m experiments.semantics --workdir runs/semantics \
        --config=experiments/configs/semantics.py:quick
    python -m experiments.semantics --workdir runs/semantics_full \
        --config=experiments/configs/semantics.py:full
    python -m experiments.semantics --workdir runs/semantics_covid \
        --config=experiments/configs/semantics.py:quick --config.data_dir=/data/covid_seg

The models (names for --config.models, trained in this order):
  multilabel  (a) the multi-label classifier of every phantom finding
  severity    (b) a regressor of the six-zone severity score only (MSE)
  abnormal    (c) a healthy/unhealthy classifier: one label, "any finding present"
  rare        (d) (a) with `rare_finding` made rare (prevalence `rare_prevalence`)
  pretrained  (e) (b) initialised from (a)'s trained weights (a fresh one-output head)

Variants (the part after ':'): "quick" (small models at 128 px that, training included, finish
within 15 minutes on a 2-core CPU), "full" (a DenseNet-121 at 224 px, GPU-sized), "test"
(seconds: the unit tests).
"""

import ml_collections


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.models = ("multilabel", "severity", "abnormal", "rare", "pretrained")
    # ---- phantoms and training (shared by every model)
    c.model = "resnet_small"
    c.image_size = 128
    c.phantom_style = "v2"
    c.phantom_contrast = 1.0
    c.num_train = 5000            # training phantoms per training set
    c.num_test = 500              # held-out phantoms for AUROC / MAE
    c.abnormal_prevalence = 0.083  # per finding, for (c): 1 - 0.917^8 = half the images abnormal
    c.rare_finding = "consolidation"
    c.rare_prevalence = 0.05
    c.optimizer = "adamw"
    c.schedule = "cosine"
    c.learning_rate = 6e-3
    c.warmup_steps = 50
    c.weight_decay = 1e-4
    c.label_smoothing = 0.0
    c.batch_size = 32
    c.eval_batch_size = 64
    c.steps = 600                 # per model
    c.eval_every = 200
    c.checkpoint_every = 200
    c.seed = 0
    c.bf16 = False
    c.kill_at_step = 0            # testing only: SIGKILL after this step's checkpoint (model 1)
    # ---- dissection
    c.data_dir = ""               # a real concept dataset (COVID-19 CXR segmentations with
    #                               structure.csv, or NIH ChestX-ray14 boxes) instead of phantoms
    c.layers = ("stride16", "last")  # stage names or aliases; "last" = the model's explain layer
    c.num_dissect = 500           # held-out images dissected
    c.dissect_batch = 50
    c.resolution = 56
    c.quantile = 0.005
    c.iou_threshold = 0.04
    c.bins = 2048
    c.shuffle = "roll"            # shuffled-mask baseline: roll | permute
    # phantom findings whose masks are added to the concepts (the "opacity" concept is their
    # union with the diffuse haze); a finding named like a concept is added as "<name> finding"
    c.finding_concepts = ("consolidation", "effusion", "pneumothorax", "nodule", "mass")
    # ---- report
    c.grid_images = 5             # top-activating images per concept
    c.grid_concepts = 8           # concepts (rows) per grid, best IoU first
    c.num_explain = 3             # predictions explained per model (semantic attribution)
    c.explain_pool = 256          # held-out images the explained predictions are chosen from
    if variant == "quick":
        # The units here are 8x8 (layer3) and 4x4 (layer4) maps. At NetDissect's top 0.5% a
        # unit's mask is about one cell in a few images, which bounds its IoU with any concept
        # larger than a nodule below 0.04: with 0.005, the five quick models (600 steps) had
        # 0-7 labelled units per layer (foreign objects and pneumothorax only, none for
        # opacity; layer2 at 16x16 no better), with 0.02 4-37, against at most 5 for the
        # re-initialised baseline and 0 for shuffled masks. The baselines use the same
        # quantile, so the comparison stays fair; the full config keeps 0.005.
        c.quantile = 0.02
    elif variant == "full":
        c.model = "densenet121"
        c.image_size = 224
        c.num_train = 20000
        c.num_test = 2000
        c.learning_rate = 1e-3
        c.warmup_steps = 200
        c.steps = 5000
        c.eval_every = 500
        c.checkpoint_every = 500
        c.layers = ("stride16", "denseblock4")
        c.num_dissect = 2000
        c.dissect_batch = 32
        c.num_explain = 6
    elif variant == "test":
        c.models = ("multilabel", "pretrained")
        c.model = "resnet_tiny"
        c.image_size = 32
        c.num_train = 48
        c.num_test = 32
        c.batch_size = 8
        c.eval_batch_size = 16
        c.steps = 2
        c.warmup_steps = 1
        c.eval_every = 2
        c.checkpoint_every = 2
        c.layers = ("last",)      # one layer keeps the test within a minute
        c.num_dissect = 32
        c.dissect_batch = 16
        c.resolution = 16
        c.bins = 64
        c.grid_images = 2
        c.grid_concepts = 3
        c.num_explain = 2
        c.explain_pool = 32
    else:
        raise ValueError(f"Unknown config variant {variant!r}: quick, full or test.")
    return c
