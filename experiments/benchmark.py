r"""Times the forward pass and every attribution method, as ratios to the forward pass (F).

    python -m experiments.benchmark --workdir runs/bench --model densenet121 \
        --image_size 224 --batch_size 8 [--methods gradcam,iba]

    python -m experiments.benchmark --workdir runs/bench --case explain_folder
    python -m experiments.benchmark --workdir runs/bench --case metrics
    python -m experiments.benchmark --workdir runs/scaling --devices 8 [--batch_size 8]
    python -m experiments.benchmark --workdir runs/shards --case shards [--num_images 200]

Writes DIR/benchmark.json (see `cxr_jax.benchmark`); the case `explain_folder` times the explain
command on 100 images against its parts and writes DIR/explain_folder.json (see
`cxr_jax.benchmark_explain`); the case `metrics` times every evaluation metric per image and
in forward passes and writes DIR/metrics.json (see `cxr_jax.benchmark_metrics`); `--devices N`
(the case `scaling`) times training and methods on 1, 2, 4 ... N devices, --batch_size images per
device, and writes DIR/scaling.json and DIR/scaling.md (see `cxr_jax.benchmark_scaling`). On a
CPU, simulate devices with XLA_FLAGS=--xla_force_host_platform_device_count=8: they share the
cores, so that table is a check of the sharded path, not a speed-up.
`--keep_freed_memory` and `--one_malloc_arena` (both on by default, see
`cxr_jax.runtime.keep_freed_memory`) make malloc reuse XLA's per-call scratch memory;
`--noone_malloc_arena` times faster compiles and slower calls, `--nokeep_freed_memory` glibc's
default. The file's setup key names the setting, so timings under another are not mixed in.
The persistent compilation cache is off unless --compilation_cache is given, because compile
time is one of the things measured.
"""

import jax
from absl import app, flags

from cxr_jax import (attribution, benchmark, benchmark_dissect, benchmark_explain,
                     benchmark_metrics, benchmark_scaling, benchmark_shards)
from experiments import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_MODEL = flags.DEFINE_string("model", "densenet121", "Registered model name.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input height and width.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per call.")
_CLASSES = flags.DEFINE_integer("num_classes", 14, "Model outputs.")
_METHODS = flags.DEFINE_list("methods", None, "Methods to time (default: all registered).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per method (fewer for slow ones).")
_SLOW_S = flags.DEFINE_float("slow_s", 30.0, "A method whose warm-up call takes longer than "
                             "this is timed once.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Re-time methods already in the file.")
_CASE = flags.DEFINE_enum("case", "methods",
                          ["methods", "explain_folder", "metrics", "dissect", "scaling",
                           "shards"],
                          "methods: the forward pass and each method; explain_folder: the "
                          "explain command on --num_images PNGs against its parts; metrics: "
                          "each evaluation metric per image; dissect: network dissection's "
                          "time and peak memory over --dissect_sizes phantoms; scaling: "
                          "images/s of training and methods on 1, 2, 4 ... --devices devices; "
                          "shards: rows/s decoding PNGs vs writing and reading shards.")
_DEVICES = flags.DEFINE_integer("devices", 0, "Largest device count of the scaling case "
                                "(0: every device). Giving it selects the scaling case.")
_FAST = flags.DEFINE_bool("fast", False, "Scaling case: the methods' cheaper settings.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 100, "Images of the explain_folder case.")
_DISSECT_SIZES = flags.DEFINE_list("dissect_sizes", ["2000", "10000"],
                                   "Dataset sizes of the dissect case.")
_DISSECT_LAYER = flags.DEFINE_string("dissect_layer", "denseblock4",
                                     "Layer the dissect case dissects.")


def main(argv):
    del argv
    if not flags.FLAGS["compilation_cache"].present:
        flags.FLAGS.compilation_cache = ""
    common.setup()
    if _CASE.value == "scaling" or flags.FLAGS["devices"].present:
        benchmark_scaling.scaling_case(
            _WORKDIR.value, model_name=_MODEL.value, image_size=_IMAGE_SIZE.value,
            per_device_batch=_BATCH.value, num_classes=_CLASSES.value,
            devices=_DEVICES.value or jax.device_count(),
            methods=_METHODS.value or ["gradcam", "integrated_gradients", "iba"],
            repeats=_REPEATS.value, fast=_FAST.value)
        with open(f"{_WORKDIR.value}/scaling.md") as f:
            print(f.read())
        return
    if _CASE.value == "shards":
        r = benchmark_shards.shards_case(_WORKDIR.value, n=_NUM_IMAGES.value,
                                         image_size=_IMAGE_SIZE.value)
        print(f"{r['rows']} PNGs at {r['png_size']} px -> {r['image_size']} px: decode "
              f"{r['decode_rows_per_s']:.1f} rows/s; shards: write {r['write_rows_per_s']:.1f}, "
              f"read {r['read_rows_per_s']:.1f} (shuffled {r['shuffled_read_rows_per_s']:.1f}) "
              f"rows/s, {r['bytes_per_row'] / 1e3:.0f} kB per row")
        return
    if _CASE.value == "explain_folder":
        r = benchmark_explain.explain_folder(
            _WORKDIR.value, model_name=_MODEL.value, n_images=_NUM_IMAGES.value,
            image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value,
            methods=_METHODS.value or attribution.FIRST_LOOK,
            repeats=_REPEATS.value, slow_s=_SLOW_S.value)
        parts = ", ".join(f"{k} {m['s_per_image']:.3f} s/img ({m['ratio_to_forward']:.1f} F, "
                          f"compile {m['compile_s']:.1f} s)" for k, m in r["methods"].items())
        print(f"forward {r['forward_s_per_image'] * 1e3:.1f} ms/img; decode {r['decode_s']:.1f}"
              f" s; {parts}\ncommand {r['wall_s']:.1f} s wall vs {r['expected_s']:.1f} s "
              f"expected: ratio {r['ratio']:.2f}")
        return
    if _CASE.value == "dissect":
        r = benchmark_dissect.dissect_case(
            _WORKDIR.value, model_name=_MODEL.value, image_size=_IMAGE_SIZE.value,
            batch_size=_BATCH.value, layer=_DISSECT_LAYER.value, num_classes=_CLASSES.value,
            sizes=[int(n) for n in _DISSECT_SIZES.value])
        print(f"forward {r['forward_s_per_image'] * 1e3:.1f} ms/img")
        for n, m in r["sizes"].items():
            print(f"{n:>6s} images: {m['wall_s']:7.1f} s ({m['ratio_to_forward']:.2f} F per "
                  f"image), peak RSS {m['peak_rss_gb']:.2f} GB, {m['labelled']}/{m['units']} "
                  f"units labelled")
        return
    if _CASE.value == "metrics":
        r = benchmark_metrics.metrics_case(
            _WORKDIR.value, model_name=_MODEL.value, image_size=_IMAGE_SIZE.value,
            batch_size=_BATCH.value, num_classes=_CLASSES.value, repeats=_REPEATS.value,
            slow_s=_SLOW_S.value)
        rows = [f"{'forward':44s} {r['forward_s_per_image'] * 1e3:9.1f} ms/img"]
        for name, m in r["metrics"].items():
            rows.append(f"{name:44s} {m['s_per_image']:9.4f} s/img {m['ratio_to_forward']:8.1f} F"
                        f" ({m['forwards_per_image']} forwards/img, compile "
                        f"{m['compile_s']:.1f} s)")
        print("\n".join(rows))
        return
    result = benchmark.run(_WORKDIR.value, model_name=_MODEL.value, image_size=_IMAGE_SIZE.value,
                           batch_size=_BATCH.value, num_classes=_CLASSES.value,
                           methods=_METHODS.value, repeats=_REPEATS.value, slow_s=_SLOW_S.value,
                           overwrite=_OVERWRITE.value)
    rows = [f"{'forward':24s} {result['forward_s_per_image'] * 1e3:9.1f} ms/img"]
    for name, m in sorted(result["methods"].items()):
        rows.append(f"{name:24s} {m['ratio_to_forward']:9.1f} F   compile {m['compile_s']:.1f} s")
    print("\n".join(rows))


if __name__ == "__main__":
    app.run(main)
