"""Attribution methods by name."""

from __future__ import annotations

from typing import Callable

_METHODS: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator: registers `fn` under `name` (the contract's method signature)."""

    def wrap(fn: Callable) -> Callable:
        if name in _METHODS:
            raise ValueError(f"Attribution method {name!r} is registered twice.")
        _METHODS[name] = fn
        return fn

    return wrap


def get(name: str) -> Callable:
    """The method registered as `name`:
    `fn(model, variables, x, targets, *, layer=None, key=None, **hparams) -> [B, H, W]`."""
    if name not in _METHODS:
        raise ValueError(
            f"Unknown attribution method {name!r}. Registered methods: {', '.join(names())}."
        )
    return _METHODS[name]


def names() -> tuple[str, ...]:
    """All registered method names, sorted."""
    return tuple(sorted(_METHODS))
