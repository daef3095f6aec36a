"""The options every training command shares (``bench cls``, ``bench seg``, ``bench det``), with one
meaning each, in the habits of mmseg/mmdet/detectron2 users.

``add_run_options`` adds them; ``run_fields`` turns the parsed options into the keyword arguments
of the run's facts object (``tasks.spec.TransferRun``), so a command builds that object once and
passes it down instead of relaying keywords. ``default_out`` is the one default folder pattern.

``--cfg-options`` uses mmengine's own ``KEY=VALUE`` syntax (``DictAction``) on every command, so a
value parses the same way whichever engine reads it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bench.core.distributed import init_distributed, launch_env
from bench.core.errors import BenchError

LAUNCHERS = ("none", "pytorch", "slurm")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class CfgOptions(argparse.Action):
    """``KEY=VALUE ...`` parsed by mmengine's ``DictAction``; a malformed pair is an argparse error."""

    def __call__(self, parser, namespace, values, option_string=None):
        from mmengine.config import DictAction  # pure Python, but slow to import: only when used

        for kv in values:
            key, sep, _ = kv.partition("=")
            if not sep or not key.strip():
                raise argparse.ArgumentError(self, f"expects KEY=VALUE pairs, got {kv!r}")
        parsed = argparse.Namespace()
        DictAction(option_strings=self.option_strings, dest="cfg")(parser, parsed, values, option_string)
        merged = dict(getattr(namespace, self.dest) or {})
        merged.update(parsed.cfg)
        setattr(namespace, self.dest, merged)


def label(text: str) -> str:
    """argparse type of ``--label``: it names rows and folders, so letters, digits and ``._+-``."""
    if not LABEL_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a label: 1-64 letters, digits or . _ + -, starting with a letter or digit"
        )
    return text


def add_run_options(p: argparse.ArgumentParser, *, default_out: str, config_help: str = "") -> None:
    """Add the shared options to ``p``. ``default_out`` describes the default ``--out`` in --help."""
    g = p.add_argument_group("options every training command shares")
    g.add_argument(
        "--label",
        type=label,
        default=None,
        help="the initialisation's name in rows and tables (default: the init of --backbone, e.g. 'mae'); "
        "give two checkpoints of one method two labels, e.g. mae-ours-800ep and mae-official",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed of the run (new layers' weights, data order)")
    g.add_argument(
        "--out",
        "--work-dir",
        dest="work_dir",
        default=None,
        metavar="DIR",
        help=f"the run's folder: checkpoints, run record, log (default {default_out})",
    )
    g.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue the run in --out from its newest readable checkpoint (default); a folder holding a "
        "run with other settings is refused. --no-resume starts fresh and moves the folder's previous "
        "checkpoints aside into previous-<time>/ (nothing is deleted)",
    )
    add_device_options(g, config_help=" (mmengine syntax: a=1 b=[1,2] c=true)" + config_help)
    g.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate a trained model (--weights) without training; writes the same row, marked eval_only",
    )
    g.add_argument("--weights", default=None, metavar="FILE", help="with --eval-only: the trained model to evaluate")
    g.add_argument("--results", default=None, help="results store (folder or .jsonl) to append the row to")
    g.add_argument("--suite", default="adhoc", help="suite name recorded in the row")
    g.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs arbitrary unpickling")
    g.add_argument(
        "--trust-config",
        action="store_true",
        help="allow a config file from outside the package, or --cfg-options that name code (a registry "
        "type, _target_, custom_imports): reading them runs Python",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar (bars are drawn on a terminal only)")


def add_device_options(g, *, config_help: str, device_default: str | None = "auto") -> None:
    """``--amp`` (``--bf16``), ``--device``, ``--launcher`` and ``--cfg-options``: every training
    command has them, ``bench pretrain`` included, with one meaning."""
    g.add_argument(
        "--amp",
        "--bf16",
        dest="amp",
        action="store_true",
        default=None,
        help="mixed precision: bf16 autocast where the hardware has it, fp16 with a gradient scaler on other "
        "GPUs (detection and segmentation: fp16); default: on for CUDA, off on CPU; --bf16 is an alias",
    )
    g.add_argument("--device", default=device_default, help="auto (CUDA when available), cpu, cuda, cuda:N")
    g.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=None,
        help="how the processes were started: 'pytorch' (torchrun) or 'slurm' (srun) join one process group "
        "and fail if that launcher's variables are missing; 'none' runs one process alone; default: "
        "detect torchrun/Slurm from the environment",
    )
    g.add_argument(
        "--cfg-options",
        nargs="+",
        action=CfgOptions,
        default={},
        metavar="KEY=VALUE",
        help="override settings by name, applied last" + config_help,
    )


def run_fields(a: argparse.Namespace) -> dict:
    """The ``TransferRun`` keyword arguments of the shared options (checked: one line on misuse)."""
    if a.eval_only and not a.weights:
        raise BenchError("--eval-only needs --weights FILE: the trained model to evaluate")
    if a.weights and not a.eval_only:
        raise BenchError("--weights is the trained model for --eval-only; pretrained weights go in --checkpoint")
    if a.weights and not Path(a.weights).is_file():
        raise BenchError(f"{a.weights}: file not found (option --weights)")
    return {
        "label": a.label,
        "seed": a.seed,
        "resume": a.resume,
        "amp": a.amp,  # None: not asked, so on for CUDA and off on the CPU
        "device": a.device,
        "cfg_options": dict(a.cfg_options or {}),
        "eval_only": a.eval_only,
        "weights": Path(a.weights) if a.weights else None,
        "results": Path(a.results) if a.results else None,
        "suite": a.suite,
        "trust_checkpoint": a.trust_checkpoint,
        "trust_config": a.trust_config,
        "progress": not a.no_progress and sys.stderr.isatty(),
    }


def default_out(command: str, task: str, protocol: str, name: str, seed: int) -> Path:
    """The one default run folder: ``work_dirs/<command>/<task>-<protocol>-<label or backbone>-s<seed>``."""
    return Path("work_dirs") / command / f"{task}-{protocol}-{name}-s{seed}"


def join_launcher(launcher: str | None, device: str = "auto") -> None:
    """Join the process group of ``launcher`` (None: whatever torchrun / Slurm set, if anything),
    with the backend ``device`` asks for (``--device cpu`` on a GPU node: gloo, not NCCL)."""
    if launcher == "none":
        return
    if launcher is not None:
        env = launch_env()
        wanted = {"pytorch": "torchrun", "slurm": "slurm"}[launcher]
        if env is None or env["source"] != wanted:
            need = "RANK and WORLD_SIZE (set by torchrun)" if launcher == "pytorch" else "SLURM_PROCID (set by srun)"
            raise BenchError(
                f"--launcher {launcher}: {need} not in the environment; start the command "
                f"under {'torchrun' if launcher == 'pytorch' else 'srun'} or use --launcher none"
            )
    init_distributed(device=device)
