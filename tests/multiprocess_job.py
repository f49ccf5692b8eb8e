"""The job of the multi-process test (`test_multiprocess.py`), also run as one process for
reference: train a tiny classifier on phantoms, evaluate it, dissect one of its layers,
explain a folder of PNGs with the explain command.

    python tests/multiprocess_job.py OUT NUM_PROCESSES PROCESS_ID COORDINATOR

Each process holds its JAX devices (the caller sets XLA_FLAGS), reads its slice of every batch,
and process 0 writes OUT/job.json with the numbers the test compares. Not a test module.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(out: str, num_processes: int, process_id: int, coordinator: str) -> None:
    from cxr_jax import runtime
    runtime.setup(compilation_cache=os.environ.get("JOB_CACHE") or None,
                  multihost=num_processes > 1, keep_freed=False,
                  coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
    import jax
    import numpy as np

    from cxr_jax import evaluation, semantics, training
    from cxr_jax.data import phantoms
    from experiments.configs import train as train_config

    # Training: the loader gives each process its slice of every global batch.
    config = train_config.get_config("test")
    # Periodic and best checkpoints at the same steps (3 and 6): the case where their barriers
    # once met under one name and hung the processes (training/checkpoint.py).
    config.checkpoint_every = 3
    trained = training.train_and_evaluate(config, os.path.join(out, "train"), progress=False)
    variables = jax.device_get(trained.variables)

    # Evaluation: every process passes the same batches, each computes its rows.
    held = phantoms.generate(12, image_size=config.image_size, seed=11)
    spec = evaluation.Spec(methods={"gradient": ("gradient", {}), "gradcam": ("gradcam", {})},
                           tolerance=2.0, batch_size=8, pixels_per_step=64,
                           sensitivity_num_n=0)
    summary = evaluation.run(os.path.join(out, "eval"), trained.model, variables, held.images,
                             held.masks, held.labels, held.finding_names, spec, progress=False)

    # Dissection: 3 batches of 8 images; each process passes only its rows of each.
    mesh = training.make_mesh()
    ph = phantoms.generate(24, image_size=config.image_size, seed=12)
    local = 8 // jax.process_count()
    lo = jax.process_index() * local
    batches = [(ph.images[s + lo:s + lo + local], ph.concepts[s + lo:s + lo + local])
               for s in range(0, 24, 8)]
    d = semantics.dissect(trained.model, variables, batches, layer="layer2", quantile=0.05,
                          resolution=16, mesh=mesh)
    # The explain command: the processes split the files; process 0 writes the report.
    from PIL import Image

    from cxr_jax import explain
    folder = os.path.join(out, "images")
    if runtime.is_writer():
        os.makedirs(folder)
        pngs = phantoms.generate(7, image_size=config.image_size, seed=13, intensity="unit")
        for i, im in enumerate(pngs.images[..., 0]):
            Image.fromarray(np.round(im * 255).astype(np.uint8)).save(
                os.path.join(folder, f"img_{i}.png"))
        with open(os.path.join(folder, "broken.png"), "w") as f:
            f.write("not an image")
    runtime.barrier("job: images written")
    ex = explain.explain_files(os.path.join(out, "train"), folder, os.path.join(out, "explain"),
                               methods="gradcam,gradient", batch_size=8, overlays=False,
                               min_side=16, progress=False)

    if runtime.is_writer():
        res = trained.results
        with open(os.path.join(out, "job.json"), "w") as f:
            json.dump({"processes": jax.process_count(), "devices": jax.device_count(),
                       "history": res["history"], "auroc": res["auroc"],
                       "params": [np.asarray(a).ravel()[:50].tolist() for a in
                                  jax.tree_util.tree_leaves(variables)],
                       "pointing_game": summary["pointing_game"], "counts": summary["counts"],
                       "thresholds": np.asarray(d.thresholds).tolist(),
                       "iou": np.asarray(d.iou).tolist(),
                       "explain_counts": ex["counts"],
                       "explain_skipped": [os.path.basename(k["path"]) for k in ex["skipped"]],
                       "explain_processes": ex["processes"]}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
