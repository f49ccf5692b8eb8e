"""cxr_jax: explaining chest X-ray classifiers in JAX.

The map (each package's own docstring lists its modules):

  Layer 0, shared      common/      atomic files, separable filters, target scores, tree paths,
                                    progress lines
                       runtime      process set-up for scripts (multi-host, compilation cache,
                                    malloc), which process writes
  Layer 1, models      models/      stage pipelines (apply with taps, edits, start); each
                                    declares its layers (Model.layers); registry by name;
                                    load(path): a training workdir or converted checkpoint
                                    with its metadata
           and data    data/        phantoms/ (synthetic radiographs with exact masks),
                                    records/ (one reader per dataset), images/ (decode,
                                    preprocess), photo/ (CheXphoto transforms), loader (Grain),
                                    datasets (by name), types (Dataset, LocalisationSet)
           and metrics metrics/     pure functions: classification, pointing, boxes, heat,
                                    faithfulness, randomization
  Layer 2, methods     attribution/ the methods, a registry of what each needs, and prepare()
                                    which makes any method ready for a model; iba/ the IBA
                                    family
           training    training/    train state, steps, checkpoints, fit / train
  Layer 3, reports     report/      figures, tables, HTML pages, the sections studies share
           scoring     evaluation/  the engine every study scores with (Spec, Scorer, run),
                                    method sets, and the evaluation study
           semantics   semantics/   network dissection (streaming, sharded, with chance
                                    baselines), semantic attribution, concept masks from
                                    real datasets
           generative  generative/  a GAN with anatomy and pathology latents (models,
                                    resumable training), inversion, latent interpolation
                                    and latent integrated gradients
  Layer 4, studies     quickstart, paper, benchmark (+ benchmark_explain, _metrics,
                       _dissect), semantics.study, photos/ (models and their maps on
                       CheXphoto-style photos), evaluation.evaluate_checkpoint,
                       training.train_and_evaluate; explain/
                       (a user's own images -> maps, overlays, gallery); convert/ (PyTorch
                       weights, with its CLI)

The data path: a phantom generator or a dataset reader -> data.datasets (a Grain source and
held-out arrays) -> training.fit -> attribution.prepare_all + evaluation.run (maps and
per-image metrics) -> evaluation.aggregate -> report (tables, figures, index.html). The
experiment scripts in experiments/ parse absl flags and make one call into a study.

Where new things go: a method is a function in attribution/ registered with
`@register(name, layer=..., needs=..., task=...)`; a metric is a pure function in metrics/; a
study is a module (or package) taking a config and a workdir, scoring through evaluation/ and
writing through report/, with a thin script in experiments/.
"""

__version__ = "0.1.0"
