"""Nested mappings (variables trees, configs): values at paths (get, set, replace), and configs
as plain dicts."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def as_path(p: str | Sequence[str]) -> tuple[str, ...]:
    """A path as a tuple of keys: "features.norm5" -> ("features", "norm5")."""
    if isinstance(p, str):
        return tuple(p.split("."))
    p = tuple(p)
    if not p or not all(isinstance(k, str) for k in p):
        raise ValueError(f"a path must be a dotted string or a tuple of keys, got {p!r}.")
    return p


def get_path(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
    """tree[path[0]][path[1]]..., or None where a key is missing."""
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def set_path(tree: dict, path: Sequence[str], value: Any) -> None:
    """Sets tree[path[0]]...[path[-1]] = value in place, creating dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def replace_path(tree: Mapping[str, Any], path: Sequence[str], value: Any) -> dict:
    """A copy of `tree` with the value at `path` replaced; `tree` itself is untouched."""
    out = dict(tree)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = replace_path(tree[path[0]], path[1:], value)
    return out


def plain(config: Any) -> Any:
    """A config (an ml_collections ConfigDict, nested ones included) as plain dicts; anything
    else (a dict, None) as it is."""
    return config.to_dict() if hasattr(config, "to_dict") else config
