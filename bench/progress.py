"""The time left of a run of cells. (Bars for a loop: ``bench.core.progress``, re-exported here.)

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

import time
from collections import Counter

from bench.core.progress import LINE_EVERY_PERCENT, LineProgress, format_duration, progress_bar

__all__ = ["Eta", "LINE_EVERY_PERCENT", "LineProgress", "format_duration", "progress_bar"]


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
