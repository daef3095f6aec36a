"""The JSONL results store: atomic concurrent appends, torn lines, schema and key checks."""

import datetime
import hashlib
import json
import multiprocessing
import os
import warnings

import pytest

from bench.core.errors import BenchError, CheckpointError
from bench.core.results import SCHEMA_VERSION, ResultsStore, config_hash, default_run_id, make_row


def plain_row(run_id="r0", seed=0, status="ok", metrics=None, **changes):
    """A valid row built by hand (no make_row: no git / torch calls in child processes)."""
    row = {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "suite": "test",
        "task": "coco",
        "protocol": "maskrcnn_fpn",
        "k": None,
        "init": "mae",
        "label": "mae",
        "backbone": "vit_base_patch16",
        "checkpoint_sha256": None,
        "provenance": None,
        "seed": seed,
        "metrics": {"APbox": 50.0, "APmask": 44.0} if metrics is None else metrics,
        "status": status,
        "error": None if status == "ok" else "boom",
        "iterations": 10,
        "wall_time_s": 1.5,
        "config_hash": "abc",
        "code_version": "test",
        "device": "cpu",
        "date": "2024-01-01T00:00:00+00:00",
        "extra": {},
        "deviations": [],
    }
    row.update(changes)
    return row


def _writer(path, writer, count, barrier):
    store = ResultsStore(path)
    barrier.wait()  # both writers start together so their appends really interleave
    for i in range(count):
        # a long payload makes a torn or interleaved write visible as broken JSON
        store.append(plain_row(run_id=f"w{writer}-{i}", seed=i, extra={"pad": "x" * 3000}))


def test_two_concurrent_writers_lose_no_rows(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 200, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    data = (tmp_path / "runs.jsonl").read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert len(lines) == 400
    for line in lines:  # every line is one complete row
        assert json.loads(line)["extra"]["pad"] == "x" * 3000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "incomplete last line" warning either
        rows = ResultsStore(tmp_path).rows()
    ids = [r["run_id"] for r in rows]
    assert sorted(ids) == sorted(f"w{w}-{i}" for w in (0, 1) for i in range(200))
    # each writer's rows keep their own order
    for w in (0, 1):
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"w{w}-")]
        assert mine == list(range(200))


def test_truncated_last_line_is_ignored_with_warning_and_trimmed_on_append(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(plain_row("a"))
    store.append(plain_row("b"))
    with open(store.path, "ab") as f:
        f.write(b'{"schema": 1, "run_id": "c", "suite": "te')  # a write cut by a kill
    with pytest.warns(UserWarning, match="incomplete last line 3"):
        rows = store.rows()
    assert [r["run_id"] for r in rows] == ["a", "b"]

    with pytest.warns(UserWarning, match="dropped an incomplete last line"):
        store.append(plain_row("d"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["run_id"] for r in store.rows()] == ["a", "b", "d"]
    assert store.path.read_bytes().count(b"\n") == 3


def test_unparsable_middle_line_names_file_and_line(tmp_path):
    store = ResultsStore(tmp_path / "runs.jsonl")
    store.append(plain_row("a"))
    with open(store.path, "ab") as f:
        f.write(b"not json\n")
    store.append(plain_row("b"))
    with pytest.raises(BenchError, match=r"runs\.jsonl line 2: not valid JSON"):
        store.rows()


def test_newer_schema_is_refused(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(plain_row("a"))
    with open(store.path, "a") as f:
        f.write(json.dumps(plain_row("b", schema=SCHEMA_VERSION + 1)) + "\n")
    with pytest.raises(BenchError) as e:
        store.rows()
    assert f"results store {store.path} was written by a newer version (schema 4 > 3" in str(e.value)


@pytest.mark.parametrize("key", ["seed", "metrics", "run_id", "extra"])
def test_missing_required_key_is_refused_naming_the_key(tmp_path, key):
    store = ResultsStore(tmp_path)
    row = plain_row()
    del row[key]
    with pytest.raises(BenchError, match=f"missing required key '{key}'"):
        store.append(row)
    assert not store.path.exists()  # nothing half-written


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("seed", "0", "'seed' must be int"),
        ("seed", True, "'seed' must be int"),
        ("k", 1.5, "'k' must be int or None, or 0.5"),
        ("k", "2", "'k' must be int or float or None"),
        ("status", "done", "'status' must be one of"),
        ("metrics", {"APbox": float("nan")}, "'APbox' must be a finite number"),
        ("metrics", {"seed": 1.0}, "clashes with a row field"),
        ("extra", {"x": object()}, "'extra' is not JSON-serialisable"),
        ("protocol", "partial", "'k' .* is required for protocol 'partial'"),
        ("init", " ", "'init' must not be empty"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path, key, value, message):
    store = ResultsStore(tmp_path)
    with pytest.raises(BenchError, match=message):
        store.append(plain_row(**{key: value}))
    with pytest.raises(BenchError, match="unknown row key 'colour'"):
        store.append(plain_row(colour="red"))
    store.append(plain_row())
    assert len(store.rows()) == 1


def test_failed_row_needs_error_and_done_ids_counts_only_ok(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(BenchError, match="'error'"):
        store.append(plain_row("x", status="failed", error=None))
    store.append(plain_row("x", status="failed", metrics={}))
    store.append(plain_row("y"))
    store.append(plain_row("z", status="failed", metrics={}))
    store.append(plain_row("z"))  # retried and finished
    assert store.done_ids() == {"y", "z"}


def test_dataframe_flattens_metrics_and_filters(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(plain_row("a", seed=0, metrics={"APbox": 50.25, "APmask": 44.5}))
    store.append(
        plain_row(
            "b",
            seed=1,
            task="ade20k",
            protocol="upernet",
            metrics={"mIoU": 47.75},
            extra={"img_size": 512, "nested": {"a": 1}},
        )
    )
    df = store.dataframe()
    assert list(df["run_id"]) == ["a", "b"]
    assert df.loc[0, "APbox"] == 50.25 and df.loc[1, "mIoU"] == 47.75
    assert df.loc[1, "extra.img_size"] == 512 and "extra.nested" not in df.columns
    assert "metrics" not in df.columns
    coco = store.dataframe(task="coco")
    assert list(coco["run_id"]) == ["a"]
    assert list(store.dataframe(task=["coco", "ade20k"], suite=None)["run_id"]) == ["a", "b"]
    assert store.dataframe(task="inat2017").empty
    with pytest.raises(BenchError, match="unknown key 'colour'"):
        store.dataframe(colour="red")


def test_make_row_hashes_checkpoint_like_hashlib(tmp_path):
    ckpt = tmp_path / "model.pth"
    payload = os.urandom(3 * (1 << 20) + 123)  # several read chunks plus a partial one
    ckpt.write_bytes(payload)
    row = make_row(
        task="coco",
        protocol="maskrcnn_fpn",
        init="mae",
        backbone="vit_base_patch16",
        seed=3,
        metrics={"APbox": 50.3},
        checkpoint=ckpt,
        config={"lr": 1e-4, "epochs": 2},
        extra={"img_size": 448},
    )
    assert row["checkpoint_sha256"] == hashlib.sha256(payload).hexdigest()
    assert row["schema"] == 3 and row["deviations"] == [] and row["suite"] == "adhoc" and row["status"] == "ok"
    assert row["label"] == "mae" and row["provenance"] is None
    assert row["config_hash"] == config_hash({"epochs": 2, "lr": 1e-4})  # key order irrelevant
    assert len(row["config_hash"]) == 12 and row["config_hash"] != config_hash({"lr": 2e-4})
    assert row["code_version"] and row["device"]
    date = datetime.datetime.fromisoformat(row["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    # run_id: stable, and different for a different seed, input size, checkpoint, config or label
    sha, chash = row["checkpoint_sha256"], row["config_hash"]
    args = ("adhoc", "coco", "maskrcnn_fpn", None, "mae", "vit_base_patch16")
    same = default_run_id(*args, 3, {"img_size": 448}, checkpoint_sha256=sha, config_hash=chash)
    assert row["run_id"] == same
    assert same == default_run_id(*args, 3, {"img_size": 448}, label="mae", checkpoint_sha256=sha, config_hash=chash)
    others = [
        default_run_id(*args, 4, {"img_size": 448}, checkpoint_sha256=sha, config_hash=chash),
        default_run_id(*args, 3, checkpoint_sha256=sha, config_hash=chash),
        default_run_id(*args, 3, {"img_size": 448}, checkpoint_sha256="0" * 64, config_hash=chash),
        default_run_id(*args, 3, {"img_size": 448}, checkpoint_sha256=sha, config_hash="f" * 12),
        default_run_id(*args, 3, {"img_size": 448}, label="mae-ours", checkpoint_sha256=sha, config_hash=chash),
        default_run_id(*args, 3, {"img_size": 448, "eval_only": True}, checkpoint_sha256=sha, config_hash=chash),
    ]
    assert len({same, *others}) == 1 + len(others)
    # ids of rows without a checkpoint, label or config are those of schema 2 (old stores stay valid)
    assert (
        default_run_id(*args, 3)
        == hashlib.sha256(
            json.dumps(
                ["adhoc", "coco", "maskrcnn_fpn", None, "mae", "vit_base_patch16", 3], separators=(",", ":")
            ).encode()
        ).hexdigest()[:16]
    )
    store = ResultsStore(tmp_path / "store")
    store.append(row)
    assert store.rows() == [row]
    with pytest.raises(CheckpointError, match="missing.pth: checkpoint file not found"):
        make_row(
            task="coco",
            protocol="maskrcnn_fpn",
            init="mae",
            backbone="vit_base_patch16",
            seed=0,
            metrics={},
            checkpoint=tmp_path / "missing.pth",
        )


def test_schema_1_rows_read_with_no_deviations(tmp_path):
    store = ResultsStore(tmp_path)
    old = plain_row("old", schema=1)
    del old["deviations"]
    store.path.write_text(json.dumps(old) + "\n")
    store.append(plain_row("new", deviations=["smoke scale", "epochs 10 < paper 90"]))
    rows = store.rows()
    assert [r["deviations"] for r in rows] == [[], ["smoke scale", "epochs 10 < paper 90"]]
    assert [r["schema"] for r in rows] == [3, 3]
    df = store.dataframe()
    assert list(df["deviations"]) == [[], ["smoke scale", "epochs 10 < paper 90"]]
    with pytest.raises(BenchError, match="row key 'schema' is 1, this version writes 3"):
        store.append(plain_row("x", schema=1))  # a schema-1 row has no 'deviations' key
    store.append(old)  # an old-form row is written in the current form
    assert store.rows()[-1] == {**old, "schema": 3, "deviations": []}


def test_schema_2_rows_read_with_label_init_and_no_provenance(tmp_path):
    store = ResultsStore(tmp_path)
    old = plain_row("old", schema=2, init="beit")
    del old["label"], old["provenance"]
    store.path.write_text(json.dumps(old) + "\n")
    store.append(plain_row("new", label="mae-ours-800ep", provenance={"source": "self-pretrained"}))
    rows = store.rows()
    assert [(r["schema"], r["label"], r["provenance"]) for r in rows] == [
        (3, "beit", None),
        (3, "mae-ours-800ep", {"source": "self-pretrained"}),
    ]
    with pytest.raises(BenchError, match="row key 'label' must not be empty"):
        store.append(plain_row("x", label=" "))


@pytest.mark.parametrize(
    "value, message",
    [
        ("smoke scale", "'deviations' must be list"),
        (["ok", ""], "'deviations' entry 1 must be a non-empty string"),
        ([3], "'deviations' entry 0 must be a non-empty string"),
        (["x" * 201], "'deviations' entry 0 is longer than 200 characters"),
        ([f"d{i}" for i in range(65)], "'deviations' has 65 entries, at most 64"),
    ],
)
def test_bad_deviations_are_refused(tmp_path, value, message):
    store = ResultsStore(tmp_path)
    with pytest.raises(BenchError, match=message):
        store.append(plain_row(deviations=value))
    assert not store.path.exists()


def test_make_row_deviations():
    row = make_row(
        task="coco",
        protocol="maskrcnn_fpn",
        init="mae",
        backbone="vit_base_patch16",
        seed=0,
        metrics={"APbox": 1.0},
        deviations=["smoke scale", "generated data", "smoke scale"],
    )
    assert row["deviations"] == ["smoke scale", "generated data"]
    with pytest.raises(BenchError, match="list of phrases, not one string"):
        make_row(
            task="coco",
            protocol="maskrcnn_fpn",
            init="mae",
            backbone="vit_base_patch16",
            seed=0,
            metrics={},
            deviations="smoke scale",
        )


def test_a_full_disk_while_appending_is_one_line_and_keeps_the_rows(tmp_path, monkeypatch):
    import errno

    from bench.core.errors import WriteError

    store = ResultsStore(tmp_path)
    store.append(plain_row("a"))
    before = store.path.read_bytes()
    real_write = os.write

    def full(fd, data):
        real_write(fd, data[:10])  # part of the line reaches the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(WriteError, match=r"cannot append the row \(No space left on device\); its earlier rows"):
        store.append(plain_row("b"))
    monkeypatch.setattr(os, "write", real_write)
    assert store.path.read_bytes() == before  # the partial line was cut off again
    store.append(plain_row("c"))
    assert [r["run_id"] for r in store.rows()] == ["a", "c"]
