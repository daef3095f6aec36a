"""The results store: one JSON line per finished (or failed) run, shared by every task.

Every task (COCO detection, ADE20K segmentation, classification) appends one row per run to
``<dir>/runs.jsonl``. Tables, plots and the "skip what is already done" logic all read this file.

Why an append-only JSONL file and not SQLite:

* **Readable and greppable.** ``grep '"init": "mae"' runs.jsonl`` or ``jq`` answer most questions;
  no client, no schema dump, no binary blob in the repository.
* **Git-diffable.** A new run is a new line at the end; review and merges are line-based.
* **Atomic appends.** A row is serialised to one complete line and written with ONE ``os.write``
  on an ``O_APPEND`` descriptor, so it lands at the end of the file in one piece, then
  ``os.fsync`` makes it durable before ``append`` returns.
* **Safe with concurrent writers.** Each append holds an exclusive ``fcntl.flock`` on the file,
  so several runs (processes, or jobs on one node) never interleave bytes. Readers take a shared
  lock and never see half a line. SQLite would also be safe, but its locking is known to be
  unreliable on the network file systems clusters use, and a corrupt page loses the whole table,
  while here a damaged line loses one row.

Robustness rules. A final line with no trailing newline is a write cut short (killed process,
full disk): the reader ignores it with a warning, and the next ``append`` trims it before writing.
Any other line that does not parse is a ``BenchError`` naming the file and line number. A row
with a ``schema`` newer than ``SCHEMA_VERSION`` is refused: an older reader must not guess.

Row fields (exactly these names; other modules rely on them)::

    schema, run_id, suite, task, protocol, k, init, label, backbone, checkpoint_sha256, provenance,
    seed, metrics, status, error, iterations, wall_time_s, config_hash, code_version, device, date,
    extra, deviations

``metrics`` maps a metric name to a float on the percent scale (0-100): APbox, APmask, APbox50,
... for COCO; mIoU, aAcc for ADE20K; top1, top5 for classification. ``extra`` holds anything
else JSON-able; ``extra['img_size']`` (e.g. 448) and ``extra['mask_ratio']`` are read by the
tables and plots; ``extra['per_example']`` names the run's ``per_example.npz`` (relative to the
store's folder, or absolute), which the tables bootstrap over.

``deviations`` lists each way the run departs from the paper's protocol, as short phrases
("smoke scale", "generated data", "epochs 10 < paper 90"); the tables print a mark and a footnote
for each. Schema 2 added it: a schema-1 row (written before) reads as ``deviations=[]``.

``label`` names the initialisation as the tables show it ("mae-ours-800ep"); it defaults to
``init`` (the method). Tables group by label and checkpoint, so two checkpoints of one method are
two rows and seeds are only seeds of one checkpoint. ``provenance`` says where the checkpoint came
from (a dict: source, data, epochs, target, arch, official), derived from the file's sha256 or from
its own run record, or None when unknown. Schema 3 added both: older rows read as
``label=init, provenance=None``.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import stat
import subprocess
import warnings
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError, CheckpointError, WriteError

SCHEMA_VERSION = 3
# 1: before 'deviations' (read as deviations=[]); 2: before 'label' and 'provenance' (read as
# label=init, provenance=None)
READABLE_SCHEMAS = (1, 2, 3)
MAX_DEVIATIONS = 64
MAX_DEVIATION_CHARS = 200
FLOAT_MAX = 1.7976931348623157e308  # sys.float_info.max
STORE_FILENAME = "runs.jsonl"

STATUSES = ("ok", "failed")

# Row field -> the types it may hold (checked in order; bool is never an int here).
FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "run_id": (str,),
    "suite": (str,),
    "task": (str,),
    "protocol": (str,),
    "k": (int, float, type(None)),  # blocks tuned in partial fine-tuning; 0.5 = the last block's MLP only (Fig. 9)
    "init": (str,),
    "label": (str,),
    "backbone": (str,),
    "checkpoint_sha256": (str, type(None)),
    "provenance": (dict, type(None)),
    "seed": (int,),
    "metrics": (dict,),
    "status": (str,),
    "error": (str, type(None)),
    "iterations": (int,),
    "wall_time_s": (float, int),
    "config_hash": (str,),
    "code_version": (str,),
    "device": (str,),
    "date": (str,),
    "extra": (dict,),
    "deviations": (list,),
}
# Fields that must be non-empty strings.
NON_EMPTY = ("run_id", "suite", "task", "protocol", "init", "label", "backbone")
# Extra keys that change what a run measures, so they take part in the default run_id: the input
# size, the MAE mask ratio, the detection engine, an evaluate-only run, and the data root's identity.
IDENTITY_EXTRA_KEYS = ("img_size", "mask_ratio", "engine", "eval_only", "data")


# ----------------------------------------------------------------------------------------------
# Building a row
# ----------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints can be several GB)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found (key 'checkpoint')")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def config_hash(config: Any) -> str:
    """First 12 hex digits of the sha256 of ``config`` as canonical JSON ('' for None)."""
    if config is None:
        return ""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise BenchError(f"run config (key 'config') cannot be hashed as JSON: {e}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def default_run_id(
    suite: str,
    task: str,
    protocol: str,
    k: int | None,
    init: str,
    backbone: str,
    seed: int,
    extra: dict | None = None,
    *,
    label: str | None = None,
    checkpoint_sha256: str | None = None,
    config_hash: str = "",
) -> str:
    """Stable id of a run: sha256 of what determines its result, 16 hex.

    The 7-tuple (suite, task, protocol, k, init, backbone, seed), then, only when present so older
    ids stay valid: the ``IDENTITY_EXTRA_KEYS`` of ``extra`` (a ViT-H run at 448 and one at 224, two
    mask ratios or two detection engines do not share an id), the label when it differs from the
    init, the checkpoint's sha256 (another pretraining of the same method is another run) and the
    effective config's hash.
    """
    key: list[Any] = [suite, task, protocol, k, init, backbone, seed]
    for name in IDENTITY_EXTRA_KEYS:
        if extra and extra.get(name) is not None:
            key.append([name, extra[name]])
    if label is not None and label != init:
        key.append(["label", label])
    if checkpoint_sha256:
        key.append(["checkpoint_sha256", checkpoint_sha256])
    if config_hash:
        key.append(["config_hash", config_hash])
    text = json.dumps(key, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe --always --dirty`` of the repository holding this file, else the package
    version as ``maebench <version>``."""
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import PackageNotFoundError, version

        return f"maebench {version('maebench')}"
    except PackageNotFoundError:
        return "maebench unknown"


@functools.lru_cache(maxsize=1)
def device_name() -> str:
    """The CUDA device name when a GPU is visible, else the CPU model."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA setup must not lose a finished run's row
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def make_row(
    *,
    task: str,
    protocol: str,
    init: str,
    backbone: str,
    seed: int,
    metrics: dict[str, float],
    suite: str = "adhoc",
    k: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    config: Any = None,
    iterations: int = 0,
    wall_time_s: float = 0.0,
    status: str = "ok",
    error: str | None = None,
    extra: dict | None = None,
    run_id: str | None = None,
    deviations: Any = (),
    label: str | None = None,
    provenance: dict | None = None,
) -> dict:
    """A complete results row. Fills code_version, device, date, checkpoint_sha256 (sha256 of
    the file at ``checkpoint``), config_hash and, unless given, run_id. ``label`` defaults to the
    init. ``deviations``: the ways this run departs from the paper's protocol (duplicates dropped,
    order kept)."""
    if isinstance(deviations, str):
        raise BenchError("make_row: row key 'deviations' must be a list of phrases, not one string")
    extra = dict(extra or {})
    sha = None if checkpoint is None else sha256_file(checkpoint)
    chash = config_hash(config)
    label = label or init
    row = {
        "schema": SCHEMA_VERSION,
        "run_id": run_id
        or default_run_id(
            suite, task, protocol, k, init, backbone, seed, extra, label=label, checkpoint_sha256=sha, config_hash=chash
        ),
        "suite": suite,
        "task": task,
        "protocol": protocol,
        "k": k,
        "init": init,
        "label": label,
        "backbone": backbone,
        "checkpoint_sha256": sha,
        "provenance": provenance,
        "seed": seed,
        "metrics": {str(name): float(value) for name, value in metrics.items()},
        "status": status,
        "error": error,
        "iterations": iterations,
        "wall_time_s": float(wall_time_s),
        "config_hash": chash,
        "code_version": code_version(),
        "device": device_name(),
        "date": utc_now(),
        "extra": extra,
        "deviations": list(dict.fromkeys(deviations)),
    }
    validate_row(row, where="make_row")
    return row


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def validate_row(row: Any, where: str) -> None:
    """Raise BenchError (naming ``where`` and the key) unless ``row`` is a well-formed row."""
    if not isinstance(row, dict):
        raise BenchError(f"{where}: a results row must be a JSON object, got {type(row).__name__}")
    for key in row:
        if key not in FIELDS:
            raise BenchError(f"{where}: unknown row key {key!r}")
    for key, types in FIELDS.items():
        if key not in row:
            raise BenchError(f"{where}: row is missing required key {key!r}")
        value = row[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise BenchError(f"{where}: row key {key!r} must be {names}, got {type(value).__name__} {value!r:.60}")
    for i, phrase in enumerate(row["deviations"]):
        if not isinstance(phrase, str) or not phrase.strip():
            raise BenchError(f"{where}: row key 'deviations' entry {i} must be a non-empty string, got {phrase!r:.60}")
        if len(phrase) > MAX_DEVIATION_CHARS:
            raise BenchError(f"{where}: row key 'deviations' entry {i} is longer than {MAX_DEVIATION_CHARS} characters")
    if len(row["deviations"]) > MAX_DEVIATIONS:
        raise BenchError(
            f"{where}: row key 'deviations' has {len(row['deviations'])} entries, at most {MAX_DEVIATIONS}"
        )
    if row["schema"] != SCHEMA_VERSION:
        raise BenchError(f"{where}: row key 'schema' is {row['schema']}, this version writes {SCHEMA_VERSION}")
    for key in NON_EMPTY:
        if not row[key].strip():
            raise BenchError(f"{where}: row key {key!r} must not be empty")
    if row["status"] not in STATUSES:
        raise BenchError(f"{where}: row key 'status' must be one of {STATUSES}, got {row['status']!r}")
    if row["status"] == "failed" and not row["error"]:
        raise BenchError(f"{where}: row key 'error' must say why a failed run failed")
    if isinstance(row["k"], float) and row["k"] != 0.5:
        raise BenchError(
            f"{where}: row key 'k' must be int or None, or 0.5 for the last block's MLP only, got {row['k']!r}"
        )
    if row["protocol"] == "partial" and row["k"] is None:
        raise BenchError(f"{where}: row key 'k' (number of fine-tuned blocks) is required for protocol 'partial'")
    for name, value in row["metrics"].items():
        if name in FIELDS:
            raise BenchError(f"{where}: metric name {name!r} (key 'metrics') clashes with a row field")
        if (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= FLOAT_MAX
        ):  # NaN, inf, and ints no float can hold
            raise BenchError(f"{where}: row key 'metrics' entry {name!r} must be a finite number, got {value!r}")
    try:
        json.dumps(row["extra"], allow_nan=False)
    except (TypeError, ValueError) as e:
        raise BenchError(f"{where}: row key 'extra' is not JSON-serialisable: {e}") from None


def upgrade_row(row: Any) -> Any:
    """A row of an older readable schema in the current form (schema 1: ``deviations=[]``; schema
    1-2: ``label=init, provenance=None``); anything else unchanged, for ``validate_row`` to judge."""
    if not isinstance(row, dict) or isinstance(row.get("schema"), bool) or row.get("schema") not in (1, 2):
        return row
    if row["schema"] == 1 and "deviations" in row:
        return row
    if row["schema"] == 2 and ("label" in row or "provenance" in row or "deviations" not in row):
        return row
    return {
        **row,
        "schema": SCHEMA_VERSION,
        "deviations": row.get("deviations", []),
        "label": row.get("init"),
        "provenance": None,
    }


# ----------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------


class ResultsStore:
    """Append-only JSONL results file. ``ResultsStore('results/demo')`` uses
    ``results/demo/runs.jsonl``; a path ending in ``.jsonl`` is used as the file itself."""

    def __init__(self, path_or_dir: str | os.PathLike):
        path = Path(path_or_dir)
        self.path = path if path.suffix == ".jsonl" else path / STORE_FILENAME
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise BenchError(f"results folder {self.path.parent} is an existing file, not a folder")

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    # -- writing --------------------------------------------------------------------------------

    def append(self, row: dict) -> None:
        """Validate ``row`` and append it as one line: one os.write under an exclusive flock,
        then fsync. A schema-1 row is written in the current form (``deviations=[]``)."""
        row = upgrade_row(row)
        validate_row(row, where=f"results store {self.path}")
        self._check_regular(missing_ok=True)
        line = (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BenchError(f"results store {self.path} is not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._trim_torn_tail(fd)
                self._write_line(fd, line)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        if created:  # make the new directory entry durable too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _write_line(self, fd: int, line: bytes) -> None:
        """One ``os.write`` + fsync; a failed or short write (a full disk) is cut off again and
        raised as one line, the store keeping its earlier rows."""
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            reason = e.strerror or str(e)
            raise WriteError(
                f"results store {self.path}: cannot append the row ({reason}); its earlier rows are kept, and "
                f"the run's own files stay in its folder"
            ) from None

    def _trim_torn_tail(self, fd: int) -> None:
        """If the file does not end in a newline (a write cut short), cut it back to the last
        complete line so our row does not get glued onto the broken one. Called under the lock."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        end = size
        while end > 0:
            start = max(0, end - 65536)
            chunk = os.pread(fd, end - start, start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        warnings.warn(
            f"results store {self.path}: dropped an incomplete last line "
            f"({size - end} bytes, a write cut short) before appending",
            stacklevel=3,
        )
        os.ftruncate(fd, end)

    # -- reading --------------------------------------------------------------------------------

    def _check_regular(self, missing_ok: bool) -> bool:
        """False when the file does not exist (and ``missing_ok``); BenchError when the path is
        a folder, a FIFO, a device or a socket: opening a FIFO would block forever."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if missing_ok:
                return False
            raise BenchError(f"{self.path}: results file not found") from None
        except OSError as e:
            raise BenchError(f"results store {self.path}: cannot read ({e.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a folder"
                if stat.S_ISDIR(st.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a socket"
                if stat.S_ISSOCK(st.st_mode)
                else "a device"
            )
            raise BenchError(f"results store {self.path} is {kind}, not a regular file")
        return True

    def numbered_rows(self) -> list[tuple[int, dict]]:
        """(line number, row) for every row, in file order ([] when the file does not exist)."""
        if not self._check_regular(missing_ok=True):
            return []
        try:  # O_NONBLOCK: a FIFO swapped in after the check must not hang the reader
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise BenchError(f"results store {self.path}: cannot open ({e.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BenchError(f"results store {self.path} is not a regular file")
            fcntl.flock(fd, fcntl.LOCK_SH)
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
        finally:
            os.close(fd)  # closing the last descriptor releases the lock
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if tail.strip():
            warnings.warn(
                f"results store {self.path}: ignoring incomplete last line "
                f"{len(lines) + 1} (no trailing newline; a write was cut short)",
                stacklevel=3,
            )
        out = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            where = f"results store {self.path} line {number}"
            try:
                row = json.loads(raw)
            except (ValueError, RecursionError) as e:  # also: bad UTF-8, ints over 4300 digits, deep nesting
                raise BenchError(f"{where}: not valid JSON ({e})") from None
            if (
                isinstance(row, dict)
                and isinstance(row.get("schema"), int)
                and not isinstance(row["schema"], bool)
                and row["schema"] > SCHEMA_VERSION
            ):
                raise BenchError(
                    f"results store {self.path} was written by a newer version "
                    f"(schema {row['schema']} > {SCHEMA_VERSION}, line {number})"
                )
            row = upgrade_row(row)
            validate_row(row, where=where)
            out.append((number, row))
        return out

    def rows(self) -> list[dict]:
        """All rows, in file order ([] when the file does not exist yet)."""
        return [row for _, row in self.numbered_rows()]

    def done_ids(self) -> set[str]:
        """run_ids that have at least one row with status 'ok'."""
        return {row["run_id"] for row in self.rows() if row["status"] == "ok"}

    def dataframe(self, **filters: Any):
        """Rows as a pandas DataFrame, one column per row field (``metrics`` flattened into one
        column per metric name, scalar ``extra`` entries as ``extra.<key>`` columns).

        ``filters`` keep rows whose field equals the value (a list/tuple/set means "any of");
        a None value means "no filter", so ``dataframe(suite=None)`` keeps every suite."""
        import pandas as pd

        for key in filters:
            if key not in FIELDS:
                raise BenchError(f"results store {self.path}: cannot filter on unknown key {key!r}")
        records = []
        for row in self.rows():
            if not all(_matches(row[key], want) for key, want in filters.items()):
                continue
            record = {key: row[key] for key in FIELDS if key != "metrics"}
            record.update(row["metrics"])
            for key, value in row["extra"].items():
                if value is None or isinstance(value, (str, int, float, bool)):
                    record[f"extra.{key}"] = value
            records.append(record)
        base = [key for key in FIELDS if key != "metrics"]
        df = pd.DataFrame.from_records(records)
        if df.empty:
            return pd.DataFrame(columns=base)
        return df


def _matches(value: Any, want: Any) -> bool:
    if want is None:
        return True
    if isinstance(want, (list, tuple, set, frozenset)):
        return value in want
    return value == want


def check_outputs(work_dir, results=None, dets_out=None) -> None:
    """Refuse unusable output paths of a ``bench det|seg|cls`` run before any work is done
    (afterwards a finished training run would be lost to a bad ``--results``)."""
    if not str(work_dir).strip():
        raise BenchError("--out must name a folder, got ''")
    if Path(work_dir).exists() and not Path(work_dir).is_dir():
        raise BenchError(f"--out {work_dir}: is an existing file, not a folder")
    if results is not None:
        if not str(results).strip():
            raise BenchError("--results must name a folder or a .jsonl file, got ''")
        store = ResultsStore(results)  # refuses a file where its folder should be
        if store.path.exists() and not store.path.is_file():
            raise BenchError(f"--results {results}: {store.path} exists and is not a regular file")
    if dets_out is not None and (not str(dets_out).strip() or Path(dets_out).is_dir()):
        raise BenchError(f"--dets-out {dets_out!r}: must name a file (it is a folder or empty)")
