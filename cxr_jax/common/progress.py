"""Progress of a long loop: a live bar on a terminal, a plain line now and then off one.

tqdm redraws its bar with carriage returns many times a second. On a terminal that is what one
wants; written to a file or a pipe (a job's log) it becomes thousands of lines. `progress`
chooses by where the output goes: a tqdm bar when the stream is a terminal, otherwise a plain
line such as

    train: 1500/5000 step (30%), 6.1 step/s, 4m 07s elapsed, about 9m 34s left

at most every `every_s` seconds or every `every_pct` percent, whichever comes first, and one
at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"


class LineProgress:
    """A tqdm-like progress counter that prints plain lines (see the module docstring).

    Supports the part of tqdm's interface the library uses: `update(n)`, `set_postfix(**kw)`,
    `close()`, and use as a context manager.
    """

    def __init__(self, total: int, *, desc: str = "", unit: str = "it", initial: int = 0,
                 file: TextIO | None = None, every_s: float = 30.0, every_pct: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = self._start = int(initial)
        self.file = file if file is not None else sys.stderr
        self.every_s, self.every_pct, self.clock = every_s, every_pct, clock
        self._t0 = self._last_t = clock()
        self._last_n = self.n
        self._postfix = ""
        self._closed = False

    def set_postfix(self, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        pct = 100.0 * (self.n - self._last_n) / max(self.total, 1)
        if now - self._last_t >= self.every_s or pct >= self.every_pct:
            self._line(now)

    def _line(self, now: float) -> None:
        done, elapsed = self.n - self._start, now - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit} "
                 f"({100.0 * self.n / max(self.total, 1):.0f}%)"]
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"{_duration(elapsed)} elapsed")
        if 0 < rate and self.n < self.total:
            parts.append(f"about {_duration((self.total - self.n) / rate)} left")
        if self._postfix:
            parts.append(self._postfix)
        print(", ".join(parts), file=self.file, flush=True)
        self._last_t, self._last_n = now, self.n

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._last_n:
                self._line(self.clock())

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, *, desc: str, unit: str = "it", initial: int = 0,
             file: TextIO | None = None):
    """A progress counter for `total` units: a tqdm bar on a terminal, `LineProgress` otherwise.

    Both have `update(n)`, `set_postfix(**kw)` and `close()`.
    """
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                    file=stream)
    return LineProgress(total, desc=desc, unit=unit, initial=initial, file=stream)
