"""Compiled explainers and the batch pipeline: files in, per-image maps out.

`Explainer` holds one compiled prediction step (probabilities, ranking scores and the chosen
target of every slot) and one compiled explainer per method, all for one batch shape, so
nothing recompiles across batches. Variables are replicated and the batch axis is sharded over
the local devices. For T target slots a method runs once per slot (`lax.map`), each slot
explaining one output index per image.

`stream` decodes files into full batches (a file that cannot be used is reported through
`on_skip` and replaced by the next one), dispatches each batch, and only then hands back the
results of the previous one: the accelerator computes batch i while the host decodes batch
i + 1 and the caller writes batch i - 1.

Random keys: a batch whose first item is item number `start` of the listing uses
`batch_key(seed, start, slot)` for target slot `slot`, the same key for every method.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cxr_jax.attribution import Prepared
from cxr_jax.explain.inputs import Item, Skip
from cxr_jax.explain.targets import Targets, ranking_scores
from cxr_jax.models import Loaded


class Result(NamedTuple):
    """One explained image.

    Attributes:
      index: its position in the listing; item: the `Item`.
      shown: [S, S] the model's crop in [0, 1], for display.
      probs: [K] probabilities (raw scores for a regressor); scores: [K] what targets were
        ranked by (calibrated scores where the model has operating points, else probs).
      targets: [T] the explained output indices.
      maps: {method: [T, S, S] float32 raw maps}.
    """

    index: int
    item: Item
    shown: np.ndarray
    probs: np.ndarray
    scores: np.ndarray
    targets: np.ndarray
    maps: dict[str, np.ndarray]


def batch_key(seed: int, start: int, slot: int) -> jax.Array:
    """The key of target slot `slot` in the batch starting at listing position `start`."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), start), slot)


class Explainer:
    """One model's compiled prediction step and per-method explainers for a fixed batch."""

    def __init__(self, loaded: Loaded, methods: Mapping[str, Prepared], targets: Targets, *,
                 batch_size: int = 8, seed: int = 0, devices=None):
        devices = list(devices if devices is not None else jax.local_devices())
        n = len(devices)
        self.batch_size = -(-int(batch_size) // n) * n  # whole rows per device
        self.loaded, self.targets, self.seed = loaded, targets, int(seed)
        mesh = Mesh(np.asarray(devices), ("data",))
        self._data = NamedSharding(mesh, P("data"))
        self.variables = jax.device_put(loaded.variables, NamedSharding(mesh, P()))
        meta = loaded.metadata
        self.input_shape = (self.batch_size, meta.input_size, meta.input_size, meta.channels)
        self._fns = {"predict": self._predict_fn()}
        self._fns.update({name: self._method_fn(p) for name, p in methods.items()})
        self._compiled: dict[str, Callable] = {}
        self.compile_s: dict[str, float] = {}

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(k for k in self._fns if k != "predict")

    def _predict_fn(self):
        model, meta, targets = self.loaded.model, self.loaded.metadata, self.targets

        def predict(variables, x):
            logits = model.apply(variables, x).astype(jnp.float32)
            scores = ranking_scores(meta, logits)
            return meta.probabilities(logits), scores, targets.select(scores)

        return predict

    def _method_fn(self, prepared: Prepared):
        model, slots, seed = self.loaded.model, self.targets.slots, self.seed

        def explain(variables, x, targets, start):
            def one(t, slot):
                return prepared(model, variables, x, t, key=batch_key(seed, start, slot))

            if slots == 1:
                return one(targets[:, 0], 0)[:, None]
            maps = jax.lax.map(lambda a: one(*a), (targets.T, jnp.arange(slots)))
            return jnp.moveaxis(maps, 0, 1)

        return explain

    def compile(self) -> dict[str, float]:
        """Compiles every step for the batch shape (once); returns seconds per step."""
        x = jax.ShapeDtypeStruct(self.input_shape, jnp.float32, sharding=self._data)
        t = jax.ShapeDtypeStruct((self.batch_size, self.targets.slots), jnp.int32,
                                 sharding=self._data)
        start = jax.ShapeDtypeStruct((), jnp.int32)
        for name, fn in self._fns.items():
            if name in self._compiled:
                continue
            t0 = time.perf_counter()
            args = (self.variables, x) if name == "predict" else (self.variables, x, t, start)
            self._compiled[name] = jax.jit(fn, out_shardings=self._data).lower(*args).compile()
            self.compile_s[name] = time.perf_counter() - t0
        return dict(self.compile_s)

    def dispatch(self, x: np.ndarray, start: int):
        """Starts one batch (x [batch_size, S, S, C]); returns device arrays without waiting:
        (probs, scores, targets, {method: maps [B, T, S, S]})."""
        self.compile()
        x = jax.device_put(np.asarray(x, np.float32), self._data)
        probs, scores, targets = self._compiled["predict"](self.variables, x)
        start = jnp.int32(start)
        maps = {m: self._compiled[m](self.variables, x, targets, start) for m in self.methods}
        return probs, scores, targets, maps

    def __call__(self, x: np.ndarray, start: int = 0):
        """(probs, scores, targets, maps) of up to `batch_size` images x, as numpy arrays."""
        n = len(x)
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"Expected 1 to {self.batch_size} images, got {n}.")
        out = self.dispatch(_pad(np.asarray(x), self.batch_size), start)
        return jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], out)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """Repeats the last row up to `size` rows (their results are dropped)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


class Timer:
    """Seconds spent per named phase, summed."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - t0
        return now


def _batches(items: Iterable[tuple[int, Item]], load: Callable, size: int,
             on_skip: Callable[[Item, str], None], timer: Timer):
    """Full batches of decoded inputs: ([(index, item)], x [n, ...], shown [n, S, S])."""
    rows, xs, shown = [], [], []
    t0 = time.perf_counter()
    for index, item in items:
        try:
            x, s = load(item.path)
        except Skip as e:
            on_skip(item, str(e))
            continue
        rows.append((index, item))
        xs.append(x)
        shown.append(s)
        if len(rows) == size:
            timer.add("decode", t0)
            yield rows, np.stack(xs), np.stack(shown)
            rows, xs, shown = [], [], []
            t0 = time.perf_counter()
    timer.add("decode", t0)
    if rows:
        yield rows, np.stack(xs), np.stack(shown)


def stream(explainer: Explainer, items: Iterable[tuple[int, Item]],
           load: Callable[[str], tuple[np.ndarray, np.ndarray]], *,
           on_skip: Callable[[Item, str], None], timer: Timer | None = None
           ) -> Iterator[list[Result]]:
    """Explains `items` batch by batch, yielding each batch's `Result`s (see module docstring).

    Args:
      explainer: the compiled explainer.
      items: (listing index, `Item`) pairs, in order.
      load: path -> (x [S, S, C], shown [S, S]); raises `Skip` for a file it cannot use.
      on_skip: called with (item, reason) for each skipped file.
      timer: accumulates "decode" and "wait" (blocked on results) seconds.
    """
    timer = timer or Timer()
    pending = None
    for rows, x, shown in _batches(items, load, explainer.batch_size, on_skip, timer):
        handles = explainer.dispatch(_pad(x, explainer.batch_size), rows[0][0])
        if pending is not None:
            yield _finish(*pending, timer)
        pending = (rows, shown, handles)
    if pending is not None:
        yield _finish(*pending, timer)


def _finish(rows, shown, handles, timer: Timer) -> list[Result]:
    t0 = time.perf_counter()
    probs, scores, targets, maps = jax.tree_util.tree_map(np.asarray, handles)
    timer.add("wait", t0)
    return [Result(index, item, shown[i], probs[i], scores[i], targets[i],
                   {m: v[i] for m, v in maps.items()})
            for i, (index, item) in enumerate(rows)]
