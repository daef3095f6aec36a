"""Progress: bars on a terminal, a line per N % in a log, and the time left of a run of cells.

``progress_bar(total, desc=...)`` is what a command's loop reports to: a tqdm bar when its stream is
a terminal; otherwise a ``LineProgress`` that prints one line per ``every`` percent (default 10 %)
and a last line at the end, so a redirected log holds a few lines instead of megabytes of carriage
returns. Both take ``update(n)``, ``set_postfix(**values)`` and ``close()`` (and ``with``)::

    bar = progress_bar(total=steps, initial=step, desc="mae")    # "mae: 30 % (300/1000), 41 s, loss 0.61"
    for ... : bar.update(1); bar.set_postfix(loss=f"{loss:.2f}")
    bar.close()

Overall progress of a run of cells: how many are done, time so far, and an estimate of what is left.

``bench run`` prints one line after each cell::

    eta = Eta(["pretrain", "pretrain", "transfer", ...])   # the kinds of the cells still to run
    ...
    print(eta.finished("pretrain", seconds))               # "progress: 1/12 cells, 41 s so far, about 7 min left"

The estimate is the mean time of the finished cells of each kind times the cells of that kind still
to run (a kind none of whose cells has finished yet is estimated at the mean of all finished cells),
so a suite whose pretraining cells are slower than its transfer cells is not over- or under-estimated
once one of each has run. With ``workers`` cells running at once (``bench run --jobs``), the seconds
of each cell are its own wall time and the work left is spread over the workers. ``expected`` (seconds per kind, e.g. from a suite's measured times) gives
an estimate before the first cell finishes.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
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


class Eta:
    """Counts finished cells of a run and estimates the time left (see the module docstring)."""

    def __init__(
        self, kinds: list[str], expected: dict[str, float] | None = None, clock=time.perf_counter, workers: int = 1
    ):
        self.total = len(kinds)
        self.workers = max(1, int(workers))
        self.left = Counter(kinds)
        self.expected = dict(expected or {})
        self.took: dict[str, list[float]] = {}
        self.clock = clock
        self.start = clock()

    @property
    def done(self) -> int:
        return self.total - sum(self.left.values())

    def remaining_seconds(self) -> float | None:
        """Estimated seconds for the cells still to run; None when nothing is known yet."""
        finished = [t for ts in self.took.values() for t in ts]
        overall = sum(finished) / len(finished) if finished else None
        total = 0.0
        for kind, n in self.left.items():
            if n == 0:
                continue
            ts = self.took.get(kind)
            per = sum(ts) / len(ts) if ts else self.expected.get(kind, overall)
            if per is None:
                return None
            total += n * per
        # cells run ``workers`` at a time: the work left spreads over them (never over more
        # workers than cells left)
        return total / min(self.workers, sum(self.left.values()) or 1)

    def plan_line(self) -> str | None:
        """Before the first cell: the expected total, when ``expected`` covers every kind."""
        left = self.remaining_seconds()
        return None if left is None else f"progress: {self.total} cells to run, about {format_duration(left)} expected"

    def finished(self, kind: str, seconds: float) -> str:
        """Record a finished (or failed) cell of ``kind`` that took ``seconds``; the progress line."""
        if self.left[kind] > 0:
            self.left[kind] -= 1
        self.took.setdefault(kind, []).append(float(seconds))
        elapsed = self.clock() - self.start
        line = f"progress: {self.done}/{self.total} cells, {format_duration(elapsed)} so far"
        left = self.remaining_seconds()
        if self.done < self.total and left is not None:
            line += f", about {format_duration(left)} left"
        return line


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
