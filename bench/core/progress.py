"""Progress bars for every loop: a tqdm bar on a terminal, a line per N % in a log.

``progress_bar(total, desc=...)`` returns a tqdm bar when its stream is a terminal; otherwise a
``LineProgress`` that prints one line per ``every`` percent (default 10 %) and a last line at the
end, so a redirected log holds a few lines instead of megabytes of carriage returns. Both take
``update(n)``, ``set_postfix(**values)`` and ``close()`` (and ``with``)::

    bar = progress_bar(total=steps, initial=step, desc="mae")    # "mae: 30 % (300/1000), 41 s, loss 0.61"
    for ... : bar.update(1); bar.set_postfix(loss=f"{loss:.2f}")
    bar.close()
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

LINE_EVERY_PERCENT = 10.0


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class LineProgress:
    """A bar for logs: one line each time another ``every`` percent of ``total`` is done, and one
    at ``close`` (with tqdm's ``update`` / ``set_postfix`` / ``close``)."""

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "",
        every: float = LINE_EVERY_PERCENT,
        file: TextIO | None = None,
        clock=time.perf_counter,
    ):
        if not every > 0:
            raise ValueError(f"every must be a positive percentage, got {every!r}")
        self.total, self.n, self.desc, self.every = max(0, int(total)), int(initial), desc, float(every)
        self.file, self.clock = file, clock
        self.start = clock()
        self.postfix = ""
        self.next_mark = self._mark_after(self.n)
        self.closed = False

    def _mark_after(self, n: int) -> float:
        """The next percentage at which a line is due, counting from ``n`` done."""
        done = 100.0 * n / self.total if self.total else 100.0
        return (int(done // self.every) + 1) * self.every

    def _line(self) -> None:
        percent = 100.0 * self.n / self.total if self.total else 100.0
        head = f"{self.desc}: " if self.desc else ""
        seconds = format_duration(self.clock() - self.start)
        tail = f", {self.postfix}" if self.postfix else ""
        print(
            f"{head}{percent:.0f} % ({self.n}/{self.total}), {seconds}{tail}", file=self.file or sys.stderr, flush=True
        )

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        done = 100.0 * self.n / self.total if self.total else 100.0
        if done >= self.next_mark and done < 100.0:
            self._line()
            self.next_mark = self._mark_after(self.n)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Off:
    """A bar that reports nothing (``enabled=False``: other ranks, ``--no-progress``)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(
    total: int,
    *,
    initial: int = 0,
    desc: str = "",
    enabled: bool = True,
    every: float = LINE_EVERY_PERCENT,
    file: TextIO | None = None,
):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a ``LineProgress`` printing a
    line per ``every`` percent; nothing at all when not ``enabled``."""
    if not enabled:
        return _Off()
    stream = file or sys.stderr
    if stream.isatty():
        return tqdm(total=total, initial=initial, desc=desc, file=stream, dynamic_ncols=True, mininterval=0.5)
    return LineProgress(total, initial=initial, desc=desc, every=every, file=stream)
