"""Files written whole or not at all: a killed run never leaves half a results file.

Every writer goes to `path + ".tmp"` first and renames it over `path` (atomic on POSIX), so a
reader sees the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path to write; on success it is renamed over `path`, on error removed.

    Example:
      >>> with atomic_path("figure.png") as tmp:
      ...     fig.savefig(tmp, format="png")
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as indented JSON with sorted keys, atomically. NumPy scalars become floats."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Reads JSON written by `write_json`, or `default` when the file is absent."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """Writes a dict of arrays as an .npz file atomically (`np.savez` through a file object, so
    numpy adds no suffix to the temporary name)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_npz(path: str | os.PathLike) -> dict | None:
    """The arrays of an .npz file as a dict (loaded into memory), or None when it is absent."""
    import numpy as np

    if not os.path.exists(path):
        return None
    with np.load(path) as f:
        return {k: f[k] for k in f.files}
