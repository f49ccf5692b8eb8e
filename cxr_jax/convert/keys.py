"""The mapping between torch state_dict keys and layouts and cxr_jax (flax) variables.

Owns the correspondence table (a torch `<module>.weight` is a convolution or linear kernel or a
batch-norm scale; running statistics are `batch_stats`), the layout changes (OIHW <-> HWIO
convolutions, [out, in] <-> [in, out] linear weights), the shapes a model expects
(`abstract_variables`, `torch_spec`) and the checked conversion in both directions
(`torch_to_flax`, `flax_to_torch`).
"""

from __future__ import annotations

import functools
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.convert.arch import infer_arch
from cxr_jax.convert.spelling import normalize_keys
from cxr_jax.models.base import Model


def _torch_entries(variables: Mapping[str, Any]) -> Iterator[tuple[str, str, tuple, str]]:
    """(torch key, collection, path, kind) for every leaf; kind in conv/dense/bn/bias/stat."""
    def walk(tree, path):
        for k, v in tree.items():
            if isinstance(v, Mapping):
                yield from walk(v, path + (k,))
            else:
                yield path + (k,), v

    for col in ("params", "batch_stats"):
        for path, leaf in walk(variables.get(col, {}), ()):
            module, name = ".".join(path[:-1]), path[-1]
            if col == "params" and name == "kernel":
                kind = "conv" if len(leaf.shape) == 4 else "dense"
                yield f"{module}.weight", col, path, kind
            elif col == "params" and name == "scale":
                yield f"{module}.weight", col, path, "bn"
            elif col == "params" and name == "bias":
                yield f"{module}.bias", col, path, "bias"
            elif col == "batch_stats" and name in ("mean", "var"):
                yield f"{module}.running_{name}", col, path, "stat"
            else:
                raise ValueError(f"No torch name for variable {col}/{'/'.join(path)}.")


# Axis orders that re-lay a tensor out between the two frameworks (linear weights transpose).
_CONV_TO_FLAX = (2, 3, 1, 0)  # OIHW -> HWIO
_CONV_TO_TORCH = (3, 2, 0, 1)  # HWIO -> OIHW


def _axes(kind: str, conv_axes: tuple[int, ...]) -> tuple[int, ...] | None:
    """The axis order for a tensor of `kind`, or None when its layout is the same in both."""
    if kind == "conv":
        return conv_axes
    if kind == "dense":
        return (1, 0)
    return None


def _to_torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    axes = _axes(kind, _CONV_TO_TORCH)
    return tuple(shape) if axes is None else tuple(shape[i] for i in axes)


def _relayout(a: np.ndarray, kind: str, conv_axes: tuple[int, ...]) -> np.ndarray:
    """`a` re-laid out for the other framework (`conv_axes` gives the direction for convs)."""
    axes = _axes(kind, conv_axes)
    return a if axes is None else np.ascontiguousarray(np.transpose(a, axes))


@functools.lru_cache(maxsize=16)
def abstract_variables(model: Model) -> dict:
    """Shapes and dtypes of `model`'s variables, as `model.init` nests them (no allocation).

    Traces each stage once with `init_with_output` (half the tracing of `eval_shape(model.init)`,
    which runs every stage's init and then its apply).
    """
    s = model.min_size
    h = jax.ShapeDtypeStruct((1, s, s, model.in_channels), jnp.float32)
    key = jax.random.key(0)
    out: dict = {}
    for stage in model.stage_list:
        if stage.module is None:
            h = jax.eval_shape(stage.fn, h)
            continue
        h, tree = jax.eval_shape(
            lambda x, st=stage: st.module.init_with_output(key, x, **st.kwargs(False)), h)
        for col, sub in tree.items():
            node = out.setdefault(col, {})
            for p in stage.path[:-1]:
                node = node.setdefault(p, {})
            node[stage.path[-1]] = sub
    return out


def torch_spec(model: Model) -> dict[str, tuple[tuple[int, ...], str]]:
    """The torch state_dict `model` corresponds to: {key: (torch shape, kind)}.

    Batch-norm `num_batches_tracked` counters are not listed (they carry no weights).
    """
    return {k: (_to_torch_shape(tuple(leaf_shape), kind), kind)
            for k, leaf_shape, kind in _entries_with_shapes(abstract_variables(model))}


def _entries_with_shapes(variables):
    for key, col, path, kind in _torch_entries(variables):
        leaf = variables[col]
        for p in path:
            leaf = leaf[p]
        yield key, leaf.shape, kind


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def torch_to_flax(state_dict: Mapping[str, Any], model: Model) -> dict:
    """Maps a torchvision-named state_dict onto `model`'s variables (pure numpy, no torch).

    Every weight of the model must come from exactly one key and every key must be used:
    `<m>.weight` [O, I, kh, kw] -> params[m]["kernel"] = transpose(w, (2, 3, 1, 0)) [kh, kw, I, O];
    linear `<m>.weight` [out, in] -> kernel = w.T; batch-norm weight/bias -> scale/bias;
    running_mean/var -> batch_stats mean/var. `num_batches_tracked` of a batch norm the model has
    and an `op_threshs` buffer are accepted and dropped (see `normalize_keys` for the key
    spellings accepted).

    Args:
      state_dict: {torch key: array-like}, e.g. from `read_state_dict`.
      model: the target `Model` (its num_classes and in_channels must match the file).
    Returns:
      {"params": ..., "batch_stats": ...} of float32 numpy arrays, ready for `model.apply`.
    Raises:
      ValueError: the file is another architecture (named when recognised), keys are missing or
        unexpected (listed), or shapes differ (each key named with both shapes).
    """
    weights, _ = normalize_keys(state_dict)
    spec = torch_spec(model)
    bn_modules = {k[: -len(".running_mean")] for k in spec if k.endswith(".running_mean")}
    unexpected = [k for k in weights if k not in spec and not (
        k.endswith(".num_batches_tracked") and k[: -len(".num_batches_tracked")] in bn_modules)]
    missing = [k for k in spec if k not in weights]
    if missing or unexpected:
        found = infer_arch(weights)
        if found is not None and found != model.name:
            raise ValueError(
                f"Wrong architecture: the file holds a {found} state_dict, not {model.name}. "
                f"Pass --arch {found} (arch={found!r}).")
        lines = [f"The state_dict does not match {model.name}:"]
        if missing:
            lines.append(f"  missing {len(missing)} key(s): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
        if found is None and missing and len(missing) == len(spec):
            lines.append("  no key matches: is this file a different architecture, or are its "
                         "keys prefixed by a wrapper other than module./model./_orig_mod.?")
        raise ValueError("\n".join(lines))

    bad = []
    for k, (shape, kind) in spec.items():
        got = tuple(np.shape(weights[k]))
        if got != shape:
            bad.append(f"  {k}: file has {list(got)}, {model.name} expects {list(shape)}")
    if bad:
        hint = ""
        head = [k for k in spec if spec[k][1] == "dense"]
        stem = [k for k in spec if spec[k][1] == "conv"][:1]
        if any(b.split(":")[0].strip() in head + stem for b in bad):
            hint = (f"\n(The model was built with num_classes={model.num_classes}, "
                    f"in_channels={model.in_channels}; `convert` reads both from the file.)")
        raise ValueError(f"Shape mismatch for {len(bad)} tensor(s):\n" + "\n".join(bad) + hint)

    variables: dict = {}
    for key, col, path, kind in _torch_entries(abstract_variables(model)):
        a = np.asarray(weights[key])
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{key}: expected floating-point weights, got dtype {a.dtype}.")
        node = variables.setdefault(col, {})
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = _relayout(a.astype(np.float32), kind, _CONV_TO_FLAX)
    return variables


def flax_to_torch(variables: Mapping[str, Any], *, num_batches_tracked: bool = True
                  ) -> dict[str, np.ndarray]:
    """The inverse of `torch_to_flax`: cxr_jax variables as a torchvision state_dict of numpy.

    Args:
      variables: {"params", "batch_stats"} of a cxr_jax model.
      num_batches_tracked: add torch's int64 batch-norm counters (zero) so the result loads into
        a torch module with `load_state_dict(strict=True)`.
    Returns:
      {torch key: numpy array} in torch layout (OIHW convolutions, [out, in] linear weights).
    """
    out = {}
    for key, col, path, kind in _torch_entries(variables):
        leaf = variables[col]
        for p in path:
            leaf = leaf[p]
        out[key] = _relayout(np.asarray(leaf), kind, _CONV_TO_TORCH)
        if num_batches_tracked and key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out
