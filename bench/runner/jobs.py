"""Running cells here: up to ``jobs`` at once, each in its own process with one torch thread, a
cell starting once what it needs has finished (a transfer cell its pretraining, a search's final
cell its candidates). With ``jobs == 1`` the cells run in this process, one after the other, in the
plan's order.

Parallel cells are forked processes: they share nothing but the output folder. Each writes only its
own work dir and appends its row to the results store, which appends under ``flock``; a killed run
leaves unfinished work dirs that the next run resumes, and rows only for finished cells."""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.core.results import ResultsStore
from bench.progress import Eta
from bench.runner.cell import ERROR_LOG, PROGRESS, execute_cell, failed_row
from bench.runner.plan import Cell
from bench.runner.state import HELD_LOCKS, cell_checkpoint, cell_status
from bench.suite import Suite

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class RunSummary:
    cells: list[Cell]
    ran: list[str]  # cell names that finished now
    skipped: list[str]  # already done
    failed: dict[str, str]  # cell name -> one-line error
    tables: list[Path]


def default_jobs() -> int:
    """The cells run at once by default: one per core; one when a GPU is visible (the cells would
    share it). ``device_count`` asks NVML, so the forked cells can still initialise CUDA."""
    return 1 if torch.cuda.device_count() > 0 else os.cpu_count() or 1


def eta_kind(cell: Cell) -> str:
    """Cells that cost about the same: a pretraining method, or a task and protocol."""
    if cell.kind == "pretrain":
        return f"pretrain:{cell.init.pretrain['method']}"
    if cell.kind == "floor":
        return "floor"
    return f"{cell.task.task}:{cell.task.protocol}"


def report(
    summary: RunSummary,
    head: str,
    cell: Cell,
    out_dir: Path,
    ok: bool,
    text: str,
    seconds: float,
    cpu_seconds: float | None = None,
) -> None:
    took = f"{seconds:.0f} s" + (f", {cpu_seconds:.0f} CPU-s" if cpu_seconds is not None else "")
    if ok:
        summary.ran.append(cell.name)
        print(f"{head}: ok in {took} ({text})", flush=True)
    else:
        summary.failed[cell.name] = text
        print(f"{head}: FAILED after {took} ({text}); traceback in {out_dir / cell.work_dir / ERROR_LOG}", flush=True)


def needs_of(cell: Cell) -> tuple[str, ...]:
    """Names of the cells that must finish before ``cell`` starts."""
    return tuple(filter(None, (cell.needs, *(c.name for c in cell.candidates))))


def run_here(suite: Suite, todo: list, total: int, out_dir: Path, done_ids: set, summary: RunSummary, jobs: int):
    """Run ``todo`` (``(number, cell)`` pairs in plan order) here, up to ``jobs`` at once."""
    eta = Eta([eta_kind(c) for _, c in todo], workers=jobs)
    waiting, running = list(todo), {}
    unfinished = {c.name for _, c in todo}
    while waiting or running:
        ready = [item for item in waiting if not unfinished.intersection(needs_of(item[1]))]
        for number, cell in ready[: max(0, jobs - len(running))]:
            waiting.remove((number, cell))
            head = f"[{number}/{total}] {cell.name}"
            state = "resuming" if cell_status(cell, out_dir, done_ids) == "resume" else "starting"
            print(f"{head}: {state} in {out_dir / cell.work_dir}", flush=True)
            error = summary.failed.get(cell.needs)
            if jobs == 1:
                start, cpu = time.perf_counter(), time.process_time()
                ok, text = execute_cell(suite, cell, out_dir, pretrain_error=error)
                finished = (cell, head, ok, text, time.perf_counter() - start, time.process_time() - cpu)
                _finish(summary, eta, unfinished, out_dir, *finished)
            else:
                running[_start(suite, cell, out_dir, error)] = (cell, head, time.perf_counter())
        if running:
            for proc, conn in _wait(running):
                cell, head, start = running.pop((proc, conn))
                ok, text, cpu = _result(suite, cell, out_dir, proc, conn, time.perf_counter() - start)
                _finish(summary, eta, unfinished, out_dir, cell, head, ok, text, time.perf_counter() - start, cpu)
        elif waiting and not ready:  # cannot happen with a plan's cells; never spin
            raise RuntimeError(f"cells wait for cells not in this run: {', '.join(c.name for _, c in waiting)}")


def _finish(summary, eta, unfinished, out_dir, cell, head, ok, text, seconds, cpu) -> None:
    unfinished.discard(cell.name)
    report(summary, head, cell, out_dir, ok, text, seconds, cpu)
    print(eta.finished(eta_kind(cell), seconds), flush=True)


def _start(suite: Suite, cell: Cell, out_dir: Path, pretrain_error: str | None):
    """Fork a process for ``cell``; returns (process, the end of the pipe its result comes on)."""
    receive, send = multiprocessing.Pipe(duplex=False)
    sys.stdout.flush()  # the child inherits unwritten output otherwise, and writes it twice
    sys.stderr.flush()
    proc = multiprocessing.get_context("fork").Process(
        target=_cell_process, args=(suite, cell, out_dir, pretrain_error, send, os.getpid()), name=cell.name
    )
    proc.start()
    send.close()
    return proc, receive


def _cell_process(suite: Suite, cell: Cell, out_dir: Path, pretrain_error: str | None, send, parent: int) -> None:
    """A forked cell: one torch thread (the cells share the cores), then the cell, then its result."""
    _die_with_parent(parent)
    for fd in list(HELD_LOCKS):  # the runner's lock is the runner's: it must go when the runner dies
        os.close(fd)
    HELD_LOCKS.clear()
    PROGRESS["bars"] = False  # several cells' bars on one terminal would overwrite each other
    os.environ["OMP_NUM_THREADS"] = "1"  # libraries that start their own pools later read it
    torch.set_num_threads(1)
    cpu = time.process_time()
    ok, text = execute_cell(suite, cell, out_dir, pretrain_error=pretrain_error)
    send.send((ok, text, time.process_time() - cpu))
    send.close()


def _die_with_parent(parent: int) -> None:
    """A cell must not outlive a killed ``bench run``: it would hold the output folder's lock and
    race the next run over the same work dir. Linux: the kernel kills it when the parent dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _wait(running: dict) -> list:
    """Block until at least one running cell's process ends; the (process, pipe) pairs that did."""
    sentinels = {proc.sentinel: key for key in running for proc in (key[0],)}
    ready = multiprocessing.connection.wait(list(sentinels))
    return [sentinels[s] for s in ready]


def _result(suite: Suite, cell: Cell, out_dir: Path, proc, conn, seconds: float) -> tuple[bool, str, float | None]:
    """The cell's (ok, text, CPU seconds); a process that died without answering (killed, out of
    memory) is a failed cell, with a failed row as ``execute_cell`` would have written."""
    answer = conn.recv() if conn.poll() else None
    proc.join()
    conn.close()
    if answer is not None:
        return answer
    text = f"the cell's process ended with exit code {proc.exitcode} before reporting"
    if cell.kind != "pretrain":
        ResultsStore(out_dir).append(failed_row(suite, cell, cell_checkpoint(cell, out_dir), text, seconds))
    return False, text, None
