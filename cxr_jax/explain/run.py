"""`explain_files`: a model and a folder (or file, or table) of radiographs -> maps, overlays,
predictions and a gallery, batched, compiled and resumable.

Order of work: load the model and check every choice (methods, targets, layer) before touching
an image; list the files; leave out those whose npz already exists (a rerun resumes); make each
method ready (`cxr_jax.attribution.prepare`: the IBA family's feature statistics come from
`iba_stats` or are estimated once from the listed images and kept in `workdir/stats/`);
compile; explain batch by batch, writing each image's npz and overlays as its batch finishes;
then write predictions.csv, results.json and the gallery from every npz in the workdir.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from cxr_jax import attribution, models, runtime
from cxr_jax.common.files import read_json, write_json
from cxr_jax.common.progress import progress as progress_bar
from cxr_jax.evaluation.methods import settings as method_settings
from cxr_jax.explain import report
from cxr_jax.explain.engine import Explainer, Timer, stream
from cxr_jax.explain.inputs import Item, find_images, load_input
from cxr_jax.explain.outputs import Writer, map_path
from cxr_jax.explain.targets import parse

DEFAULT_METHODS = attribution.FIRST_LOOK


def method_specs(loaded: models.Loaded, methods: str | Sequence[str], *,
                 layer: str | None = None, hparams: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> dict[str, tuple[str, dict]]:
    """{method: (method, hparams)}: the registry's fast settings, then `layer` for methods that
    explain one layer (the CAM family, NormGrad, IBA; those of several layers, such as
    Multi-layer IBA, keep the model's), then
    `hparams[method]`; a baseline given by name ("black", "zero") becomes the model's input
    (`named_baseline`). Every name and layer is checked here, before any work.

    Raises:
      ValueError: an unknown method or layer, a method that does not suit the model's task, or
        hyperparameters for a method that was not chosen, an unknown baseline name (each
        message lists what is valid).
    """
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    names = [m for m in names if m]
    if not names:
        raise ValueError(f"No methods given; choose from {', '.join(attribution.names())}.")
    hparams = {k: dict(v) for k, v in (hparams or {}).items()}
    stray = sorted(set(hparams) - set(names))
    if stray:
        raise ValueError(f"Hyperparameters given for {stray}, which are not among the chosen "
                         f"methods {names}.")
    regression = loaded.metadata.output == "identity"
    model = loaded.model
    specs = {}
    for name in dict.fromkeys(names):
        info = attribution.info(name)  # raises for an unknown name, listing the registered ones
        if not info.suits(regression=regression):
            suited = [i.name for i in attribution.infos() if i.suits(regression=regression)]
            raise ValueError(f"{name} explains {info.task} models, but this model is a "
                             f"{'regressor' if regression else 'classifier'}; choose from "
                             f"{', '.join(suited)}.")
        hp = info.settings(fast=True)
        if layer and info.layer is not None and isinstance(model.layer(role=info.layer), str):
            hp["layer"] = layer  # methods of one layer; those of several keep theirs
        hp.update(hparams.get(name, {}))
        if isinstance(hp.get("baseline"), str):
            hp["baseline"] = named_baseline(hp["baseline"], loaded.metadata, name)
        if hp.get("layer") is not None:
            # raises, listing the model's stages (points inside units are accepted too)
            attribution.resolve_layers(model, hp["layer"])
        specs[name] = (name, hp)
    return specs


def named_baseline(name: str, meta: models.Metadata, method: str = "integrated_gradients"
                   ) -> float | list[float]:
    """A path method's baseline given by name, as the model's input.

    "black": the model's input for a black image (intensity 0: -1024 in TorchXRayVision's
    [-1024, 1024], 0 in [0, 1], -mean/std per channel for ImageNet models); "zero": an input of
    zeros (METHODS.md's b = 0, mid-grey in [-1024, 1024]); or a number, as text.
    Returns a float, or one float per channel where the channels differ.

    Raises:
      ValueError: any other name.
    """
    if name == "zero":
        return 0.0
    if name == "black":
        black = meta.to_input(np.zeros((1, 1), np.float32)).reshape(-1)
        return float(black[0]) if np.all(black == black[0]) else [float(v) for v in black]
    try:
        return float(name)
    except ValueError:
        raise ValueError(f"{method}: unknown baseline {name!r}; use 'black' (the model's input "
                         f"for a black image), 'zero', or a number.") from None


def _stats_source(items: Sequence[Item], loaded: models.Loaded, limit: int, min_side: int):
    """A callable giving up to `limit` decoded images, 64 per batch, for statistics."""

    def images():
        batch, batches, n = [], [], 0
        for item in items:
            if n >= limit:
                break
            try:
                batch.append(load_input(item.path, loaded.metadata, min_side=min_side)[0])
            except Exception:  # unusable files are reported by the main pass
                continue
            n += 1
            if len(batch) == 64:
                batches.append(np.stack(batch))
                batch = []
        if batch:
            batches.append(np.stack(batch))
        if not batches:
            raise ValueError("No readable images to estimate the IBA statistics from; pass "
                             "iba_stats (--iba_stats) from an earlier run.")
        return batches

    return images


def _copy_stats(source: str, stats_dir: str) -> list[str]:
    """Copies IBA statistics (one `iba_stats_<layer>.npz` file, or a folder of them) into the
    workdir's cache folder; returns the copied file names."""
    if os.path.isdir(source):
        names = sorted(f for f in os.listdir(source) if f.startswith("iba_stats_")
                       and f.endswith(".npz"))
        files = [os.path.join(source, f) for f in names]
    elif os.path.isfile(source):
        files = [source]
    else:
        raise ValueError(f"--iba_stats {source!r} is neither a statistics file nor a folder.")
    if not files or not all(os.path.basename(f).startswith("iba_stats_") for f in files):
        raise ValueError(f"--iba_stats {source!r}: expected files named iba_stats_<layer>.npz "
                         f"(written to <workdir>/stats/ by an earlier run).")
    os.makedirs(stats_dir, exist_ok=True)
    for f in files:
        shutil.copyfile(f, os.path.join(stats_dir, os.path.basename(f)))
    return [os.path.basename(f) for f in files]


def _check_settings(workdir: str, settings: dict) -> None:
    """Records what the maps in `workdir` were made with (settings.json); a rerun with other
    settings would mix maps of two kinds under one gallery, so it is refused."""
    path = os.path.join(workdir, "settings.json")
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as the file holds them
    old = read_json(path)
    if old is not None and old != settings:
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise ValueError(f"{workdir!r} holds maps made with other settings ({', '.join(changed)}"
                         f" differ); use a new --workdir, or delete this one to start over.")
    os.makedirs(workdir, exist_ok=True)
    if old is None and runtime.is_writer():
        write_json(path, settings)


def _prepare(specs, loaded: models.Loaded, items: Sequence[Item], stats_dir: str,
             stats_images: int, min_side: int) -> tuple[dict, list[str]]:
    """The prepared methods (IBA statistics from `stats_dir` or estimated from `items`) and
    the warnings preparing them gave (shown, and kept for results.json)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ready = attribution.prepare_all(
            specs, loaded.model, loaded.variables,
            _stats_source(items, loaded, stats_images, min_side),
            cache=attribution.Cache(stats_dir))
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ready, [str(w.message) for w in caught]


def _explain_todo(explainer: Explainer, todo, writer: Writer, skipped: list, timer: Timer, *,
                  min_side: int, progress: bool) -> int:
    """Explains and writes the images not yet done; appends skipped files to `skipped`;
    returns how many were explained."""
    meta = explainer.loaded.metadata
    bar = progress_bar(len(todo), desc="explain", unit="img") if progress and todo else None

    def on_skip(item, reason):
        skipped.append({"path": item.path, "reason": reason})
        if bar is not None:  # the bar counts images explained, of those still possible
            bar.total -= 1

    def load(path):
        return load_input(path, meta, min_side=min_side)

    explained = 0
    for batch in stream(explainer, todo, load, on_skip=on_skip, timer=timer):
        t0 = time.perf_counter()
        for r in batch:
            writer.write(r)
        timer.add("write", t0)
        explained += len(batch)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return explained


def _gather_share(workdir: str, explained: int, skipped: list) -> tuple[int, list]:
    """With several processes: every process's (explained count, skipped files), summed and
    joined in process order, through small files in `workdir` (a filesystem all processes
    read, as the maps themselves need). With one process: the arguments unchanged."""
    if jax.process_count() == 1:
        return explained, skipped
    path = lambda p: os.path.join(workdir, f".share_{p}.json")
    write_json(path(jax.process_index()), {"explained": explained, "skipped": skipped})
    runtime.barrier("explain: every share written")
    shares = [read_json(path(p)) for p in range(jax.process_count())]
    runtime.barrier("explain: every share read")
    if runtime.is_writer():
        for p in range(jax.process_count()):
            os.remove(path(p))
    return (sum(s["explained"] for s in shares), [f for s in shares for f in s["skipped"]])


def explain_files(model: str | os.PathLike | models.Loaded, images: str | os.PathLike,
                  workdir: str | os.PathLike, *, methods: str | Sequence[str] = DEFAULT_METHODS,
                  targets: str | Sequence[str] = "top1", layer: str | None = None,
                  hparams: Mapping[str, Mapping[str, Any]] | None = None,
                  root: str | None = None, column: str | None = None, batch_size: int = 8,
                  iba_stats: str | None = None, stats_images: int = 1000,
                  maps_dtype: str = "float32", overlays: bool = True, page_size: int = 50,
                  min_side: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """Explains every image in `images` with `model`; writes and returns the results dict.

    Args:
      model: a training workdir or converted checkpoint folder (`cxr_jax.models.load`), or a
        `Loaded` model.
      images: an image file, a folder (recursive) or a CSV table with a path column.
      workdir: output folder; a rerun with the same folder and settings skips images already
        done (other settings are refused: settings.json records them).
      methods: registered method names (list or comma-separated), with the registry's fast
        settings (Integrated Gradients 16 steps, SmoothGrad 10 samples).
      targets: "top1" / "topK", "all", or finding names (see `cxr_jax.explain.targets.parse`).
      layer: layer (a stage or alias such as "stride16") of the methods that explain one layer.
      hparams: {method: {name: value}} over the defaults, e.g. {"iba": {"beta": 10}}.
      root, column: for a table, the folder its paths are relative to and its path column.
      batch_size: images per compiled call (rounded up to a multiple of the local devices).
      iba_stats: an `iba_stats_<layer>.npz` file or a folder of them (e.g. an earlier
        workdir's stats/), instead of estimating from the images.
      stats_images: at most this many images are decoded to estimate IBA statistics (fewer
        than 1,000 draws the library's warning).
      maps_dtype: "float32", or "float16" (maps scaled by their max |value|; see `outputs`).
      overlays: write overlay PNGs and the gallery's pictures.
      page_size: images per gallery page.
      min_side: shorter image sides below this many pixels are refused as too small.
      seed: random key of the stochastic methods (see `engine.batch_key`).
      progress: show a progress bar (images/s).
    Returns:
      The dict written to `workdir/results.json`: "counts" (listed, explained, done before,
      skipped), "skipped" [{"path", "reason"}], "timings" (seconds), "methods" (settings),
      "targets", "model" (metadata), "warnings".
    """
    t_start = time.perf_counter()
    workdir = os.fspath(workdir)
    loaded = model if isinstance(model, models.Loaded) else models.load(model)
    meta = loaded.metadata
    chosen = parse(targets, meta)
    specs = method_specs(loaded, methods, layer=layer, hparams=hparams)
    items, skipped = find_images(images, root=root, column=column)
    _check_settings(workdir, {"model": os.path.abspath(meta.path), "targets": chosen.spec,
                              "methods": specs, "maps_dtype": maps_dtype, "seed": seed,
                              "layer": layer})
    writer = Writer(workdir, meta.finding_names, maps_dtype=maps_dtype, overlays=overlays)
    todo = [(i, it) for i, it in enumerate(items) if not os.path.exists(map_path(workdir,
                                                                                    it.name))]
    timer = Timer()
    t0 = time.perf_counter()
    stats_dir = os.path.join(workdir, "stats")
    copied = _copy_stats(iba_stats, stats_dir) if iba_stats else []
    ready, caught = _prepare(specs, loaded, items, stats_dir, stats_images, min_side)
    t0 = timer.add("prepare", t0)
    explainer = Explainer(loaded, ready, chosen, batch_size=batch_size, seed=seed)
    if todo:
        explainer.compile()
    timer.add("compile", t0)
    # Several processes split the images (process p takes every P-th one still to do), each
    # explaining its share on its own devices and writing its own files; then process 0
    # gathers the counts and skipped files and writes the report over every map.
    rank, size = jax.process_index(), jax.process_count()
    local_skipped: list = []
    explained = _explain_todo(explainer, todo[rank::size], writer, local_skipped, timer,
                              min_side=min_side, progress=progress)
    explained, local_skipped = _gather_share(workdir, explained, local_skipped)
    skipped += local_skipped
    results = {
        "model": meta.summary(), "images": os.fspath(images), "targets": chosen.spec,
        "methods": method_settings(ready),
        "batch_size": explainer.batch_size, "devices": jax.device_count(),
        "processes": jax.process_count(),
        "iba_stats": {"copied": copied, "folder": stats_dir} if copied else stats_dir,
        "warnings": caught,
        "counts": {"listed": len(items), "explained": explained,
                   "done_before": len(items) - len(todo),
                   "skipped": len(skipped)},
        "skipped": skipped,
    }
    t0 = time.perf_counter()
    done = [it for it in items if os.path.exists(map_path(workdir, it.name))]
    if runtime.is_writer():
        report.write(workdir, done, meta, list(ready), results, page_size=page_size,
                     overlays=overlays)
    timer.add("report", t0)
    timer.seconds.update(total=time.perf_counter() - t_start,
                         compile_per_method=explainer.compile_s)
    results["timings"] = timer.seconds
    if explained:
        results["images_per_s"] = explained / max(timer.seconds["total"] - timer.seconds[
            "prepare"] - timer.seconds["compile"], 1e-9)
    if runtime.is_writer():
        write_json(os.path.join(workdir, "results.json"), results)
    return results

