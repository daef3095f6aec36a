"""Slurm (submitit): one job per cell, requeued on preemption / timeout, resuming from its work dir."""

from __future__ import annotations

import time
from pathlib import Path

from bench.core.distributed import init_distributed, leave_process_group
from bench.core.errors import BenchError, first_line
from bench.core.results import ResultsStore
from bench.runner.cell import execute_cell, failed_row
from bench.runner.jobs import RunSummary, report
from bench.runner.plan import Cell, plan
from bench.runner.state import cell_checkpoint
from bench.suite import Suite, load_suite

# --------------------------------------------------------------------------------------------------
# Slurm (submitit): one job per cell, requeued on preemption / timeout, resuming from its work dir
# --------------------------------------------------------------------------------------------------


class CellJob:
    """One cell as a submitit job. submitit calls ``checkpoint`` when the job is preempted or
    reaches its time limit and requeues what it returns: the same cell, which resumes from the
    checkpoints in its work dir. With several tasks per job (GPUs) every task runs the cell under
    torch.distributed; only rank 0 writes the row."""

    def __init__(
        self,
        suite_path: Path,
        seeds: tuple[int, ...],
        out_dir: Path,
        cell_name: str,
        pretrain_error: str | None = None,
        trust_config: bool = False,
    ):
        self.suite_path, self.seeds, self.out_dir = Path(suite_path), tuple(seeds), Path(out_dir)
        self.cell_name, self.pretrain_error = cell_name, pretrain_error
        self.trust_config = trust_config

    def __call__(self) -> tuple[bool, str]:
        import submitit

        suite = load_suite(self.suite_path).with_seeds(self.seeds)
        if self.trust_config:
            suite = suite.with_trust_config()
        cell = next(c for c in plan(suite) if c.name == self.cell_name)
        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            init_distributed()
        result = execute_cell(suite, cell, self.out_dir, pretrain_error=self.pretrain_error)
        leave_process_group()  # submitit still has to return the result: leave together, keep the process
        return result

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def run_with_executor(suite: Suite, todo: list, total: int, out_dir: Path, executor, summary: RunSummary) -> None:
    """Submit the pretraining cells and wait for them, then the search candidates, then the other
    transfer cells (a search's final cell needs its candidates' rows)."""

    def phase(cell: Cell) -> int:
        return 0 if cell.kind == "pretrain" else 1 if cell.role == "candidate" else 2

    for number in (0, 1, 2):
        batch = [(n, c) for n, c in todo if phase(c) == number]
        jobs = []
        for number, cell in batch:
            executor.update_parameters(name=f"{suite.name}:{cell.name}")
            job = executor.submit(
                CellJob(
                    suite.path,
                    suite.seeds,
                    out_dir,
                    cell.name,
                    summary.failed.get(cell.needs),
                    trust_config=all(t.trust_config for t in suite.tasks),
                )
            )
            print(f"[{number}/{total}] {cell.name}: submitted as job {job.job_id}", flush=True)
            jobs.append((number, cell, job, time.perf_counter()))
        for number, cell, job, start in jobs:
            try:
                ok, text = job.results()[0]  # rank 0's answer
            except Exception as exc:  # the job died outside execute_cell (node failure, OOM kill)
                ok, text = False, f"job {job.job_id}: {first_line(exc, with_type=True)}"
                if cell.kind != "pretrain":
                    ResultsStore(out_dir).append(failed_row(suite, cell, cell_checkpoint(cell, out_dir), text, 0.0))
            report(summary, f"[{number}/{total}] {cell.name}", cell, out_dir, ok, text, time.perf_counter() - start)


SLURM_KEYS = {
    "partition": ("slurm_partition", str),
    "nodes": ("nodes", int),
    "gpus-per-node": ("gpus_per_node", int),
    "tasks-per-node": ("tasks_per_node", int),
    "cpus-per-task": ("cpus_per_task", int),
    "time": ("timeout_min", int),
    "mem-gb": ("mem_gb", int),
    "account": ("slurm_account", str),
    "qos": ("slurm_qos", str),
    "constraint": ("slurm_constraint", str),
}


def parse_slurm(spec: str) -> dict:
    """``partition=gpu,nodes=1,gpus-per-node=8,time=4320`` -> submitit ``update_parameters``
    keywords. ``tasks-per-node`` defaults to ``gpus-per-node`` (one process per GPU); ``time`` is
    in minutes."""
    params = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in SLURM_KEYS or not value:
            raise BenchError(f"option --slurm: {item!r} is not KEY=VALUE with KEY one of {', '.join(SLURM_KEYS)}")
        name, kind = SLURM_KEYS[key]
        try:
            params[name] = kind(value)
        except ValueError:
            raise BenchError(f"option --slurm: {key} must be an integer, got {value!r}") from None
    if "gpus_per_node" in params:
        params.setdefault("tasks_per_node", params["gpus_per_node"])
    return params


def slurm_executor(spec: str, out_dir: Path):
    """A submitit Slurm executor writing its logs to ``<out>/slurm``."""
    import submitit

    params = parse_slurm(spec)
    try:
        executor = submitit.AutoExecutor(folder=out_dir / "slurm" / "%j", cluster="slurm")
    except Exception as e:  # no sbatch here
        raise BenchError(
            f"option --slurm: cannot submit Slurm jobs from this machine ({first_line(e, with_type=True)}); use --local"
        ) from None
    executor.update_parameters(slurm_max_num_timeout=20, **params)
    return executor
