"""``squeezer tune-report``: tasks, curves, PNG and JSON rebuilt from a record directory.

The record directory is written through :class:`RecordStore` from hand-made MetaSchedule records
(a real trace on a real workload, chosen run seconds), so no tuning search runs.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
from pathlib import Path

import pytest
import tvm
import tvm.s_tir.meta_schedule as ms
from rich.console import Console
from tvm import te

from squeezer.errors import TuningError
from squeezer.tune.records import RECORDS, RUNS, RecordStore, workload_key
from squeezer.tune.report import (
    _approx_timeline,
    cmd_tune_report,
    load_report,
    load_tasks,
    plot_curves,
    report_rows,
)

KEY_DIR = "x86-test"
FAILED = 1e10
# Trial order over both tasks: (task, run seconds).
TRIALS = [("mm", 2e-3), ("add", FAILED), ("mm", 5e-4), ("add", 3e-4), ("mm", FAILED),
          ("mm", 6e-4)]
DEFAULTS = {"mm": 1e-3, "add": 4e-4}
CALLS = {"mm": 3, "add": 2}  # in the newest run
MM_FLOPS = 2 * 64 ** 3


def _modules():
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    a = te.placeholder((64, 64), name="A")
    b = te.placeholder((64, 64), name="B")
    k = te.reduce_axis((0, 64), name="k")
    mm = te.compute((64, 64), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    add = te.compute((64, 64), lambda i, j: a[i, j] + b[i, j], name="D")
    funcs = {"mm": te.create_prim_func([a, b, mm]), "add": te.create_prim_func([a, b, add])}
    return {name: (f, _normalize_mod(f)) for name, f in funcs.items()}


def _trace(mod, block: str):
    sch = tvm.s_tir.Schedule(mod)
    loops = sch.get_loops(sch.get_sblock(block))
    outer, inner = sch.split(loops[0], [None, 8])
    sch.reorder(outer, loops[1], inner)
    return sch.trace


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict:
    """``root/x86-test/`` with two tasks, two runs (the newest weighs them), six trials."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    root = tmp_path_factory.mktemp("tune-report")
    key_dir = root / KEY_DIR
    store = RecordStore(write_dir=key_dir)
    mods = _modules()
    keys, workloads, traces = {}, {}, {}
    for name, (_, mod) in mods.items():
        workloads[name] = store.commit_workload(mod)
        keys[name] = workload_key(mod)
        store.commit_baseline(mod, DEFAULTS[name])
        traces[name] = _trace(mod, {"mm": "C", "add": "D"}[name])
    store.commit_run({"model": "old", "started": "2025-01-01T00:00:00+00:00", "threads": 2,
                      "trials": 10, "rpc": None,
                      "tasks": [{"workload": keys["mm"], "name": "old_matmul", "calls": 1,
                                 "flops": 1.0}]})
    store.commit_run({"model": "tiny", "started": "2025-01-02T00:00:00+00:00", "threads": 2,
                      "trials": 6, "rpc": None,
                      "tasks": [{"workload": keys["mm"], "name": "matmul", "calls": CALLS["mm"],
                                 "flops": float(MM_FLOPS)},
                                {"workload": keys["add"], "name": "add", "calls": CALLS["add"],
                                 "flops": 4096.0}]})
    target = tvm.target.Target("llvm")
    for name, secs in TRIALS:
        func = mods[name][0]
        store.commit_tuning_record(TuningRecord(
            traces[name], workloads[name], run_secs=[secs], target=target,
            args_info=ms.arg_info.ArgInfo.from_prim_func(func)))
    return {"root": root, "dir": key_dir, "keys": keys, "mods": mods}


def _copy(records: dict, tmp_path: Path) -> Path:
    dst = tmp_path / "root" / KEY_DIR
    shutil.copytree(records["dir"], dst)
    return dst


def _by_name(tasks):
    return {t.name: t for t in tasks}


def test_load_tasks_rebuilds_trials_best_and_curves(records):
    tasks = _by_name(load_tasks(records["dir"]))
    assert sorted(tasks) == ["add", "matmul"]  # names from the newest run, not "main"
    mm, add = tasks["matmul"], tasks["add"]
    assert (mm.trials, mm.failures, mm.best_seconds) == (4, 1, 5e-4)
    assert mm.curve == [(1, 2e-3), (2, 5e-4), (4, 5e-4)]
    assert (add.trials, add.failures, add.best_seconds) == (2, 1, 3e-4)
    assert add.curve == [(2, 3e-4)]
    assert (mm.weight, add.weight) == (CALLS["mm"], CALLS["add"])
    assert (mm.flops, add.flops) == (MM_FLOPS, 4096.0)
    assert (mm.default_seconds, add.default_seconds) == (DEFAULTS["mm"], DEFAULTS["add"])
    assert mm.signature() == "float32[64,64], float32[64,64] -> float32[64,64]"
    assert workload_key(mm.mod) == records["keys"]["mm"]


def test_model_timeline_follows_trial_order(records):
    report = load_report(records["dir"])
    assert report.model == "tiny"
    assert sorted(t.name for t in report.model_tasks) == ["add", "matmul"]
    default = 3 * 1e-3 + 2 * 4e-4
    after_mm = default - 3 * (1e-3 - 5e-4)  # trial 3: matmul 1 ms -> 0.5 ms, 3 calls
    after_add = after_mm - 2 * (4e-4 - 3e-4)  # trial 4: add 0.4 ms -> 0.3 ms, 2 calls
    expected = [(0, default), (3, after_mm), (4, after_add), (6, after_add)]
    assert [n for n, _ in report.timeline] == [n for n, _ in expected]
    assert [s for _, s in report.timeline] == pytest.approx([s for _, s in expected])
    assert report.model_seconds(False) == pytest.approx(default)
    assert report.model_seconds(True) == pytest.approx(after_add)


def test_without_runs_one_call_and_estimated_flops(records, tmp_path):
    key_dir = _copy(records, tmp_path)
    (key_dir / RUNS).unlink()
    report = load_report(key_dir)
    assert report.model is None and len(report.model_tasks) == 2
    tasks = {workload_key(t.mod): t for t in report.tasks}
    mm = tasks[records["keys"]["mm"]]
    assert mm.name == "main"  # the workloads.jsonl name
    assert mm.weight == 1
    assert mm.flops == MM_FLOPS  # estimated from the TIR
    assert mm.trials == 4


def test_cmd_tune_report_writes_png_and_json(records, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    console = Console(file=out, width=200)
    args = argparse.Namespace(records=str(records["dir"]), png=None,
                              json=str(tmp_path / "out" / "report.json"), quiet=False)
    assert cmd_tune_report(args, console) == 0
    png = tmp_path / f"tune-report-{KEY_DIR}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000
    text = out.getvalue()
    assert "2 task(s), 6 trial(s) (2 failed)" in text
    assert "default 3.800 ms -> tuned 2.100 ms" in text
    assert "matmul" in text
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["model"] == "tiny"
    assert (doc["trials"], doc["failures"]) == (6, 2)
    assert doc["model_default_ms"] == pytest.approx(3.8)
    assert doc["model_tuned_ms"] == pytest.approx(2.1)
    rows = {r["name"]: r for r in doc["tasks"]}
    assert [r["name"] for r in doc["tasks"]] == ["matmul", "add"]  # heaviest first
    assert rows["matmul"]["default_us"] == pytest.approx(1000.0)
    assert rows["matmul"]["tuned_us"] == pytest.approx(500.0)
    assert rows["matmul"]["speedup"] == pytest.approx(2.0)
    assert (rows["matmul"]["trials"], rows["matmul"]["failures"]) == (4, 1)
    assert rows["add"]["speedup"] == pytest.approx(4 / 3)
    assert rows["add"]["calls"] == 2
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary file left behind


def test_quiet_with_explicit_png(records, tmp_path):
    out = io.StringIO()
    png = tmp_path / "curves.png"
    args = argparse.Namespace(records=str(records["root"]), png=str(png), json=None, quiet=True)
    assert cmd_tune_report(args, Console(file=out, quiet=True)) == 0
    assert png.stat().st_size > 5000
    assert out.getvalue() == ""


def test_root_with_one_key_dir_and_with_several(records, tmp_path):
    assert load_report(records["root"]).directory == records["dir"]
    key_dir = _copy(records, tmp_path)
    assert load_report(key_dir.parent).directory == key_dir
    shutil.copytree(key_dir, key_dir.parent / "arm-test")
    with pytest.raises(TuningError, match="arm-test") as err:
        load_tasks(key_dir.parent)
    assert KEY_DIR in str(err.value) and "2 targets" in str(err.value)


def test_missing_or_empty_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(TuningError, match="no such record directory") as err:
        load_tasks(missing)
    assert str(missing) in str(err.value)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(TuningError, match=RECORDS) as err:
        load_tasks(empty)
    assert str(empty) in str(err.value)


def test_corrupt_line_is_skipped_with_a_warning(records, tmp_path, caplog):
    key_dir = _copy(records, tmp_path)
    with open(key_dir / RECORDS, "a") as f:
        f.write('{"workload": "12", "rec\n')
    caplog.set_level(logging.WARNING, logger="squeezer.tune")
    tasks = _by_name(load_tasks(key_dir))
    assert f"{key_dir / RECORDS}:{len(TRIALS) + 1}: skipped a corrupt" in caplog.text
    assert tasks["matmul"].trials == 4 and tasks["add"].trials == 2


def test_plot_curves_without_timeline_or_defaults(records, tmp_path):
    tasks = load_tasks(records["dir"])
    approx = _approx_timeline(tasks)
    assert approx[0] == (0, pytest.approx(3.8e-3))
    assert approx[-1] == (6, pytest.approx(2.1e-3))  # the end point is exact
    assert plot_curves(tasks, tmp_path / "a.png", title="t").stat().st_size > 5000
    tasks[0].default_seconds = None
    assert _approx_timeline(tasks) is None
    assert plot_curves(tasks, tmp_path / "b.png").stat().st_size > 5000
    rows = report_rows(tasks)
    no_default = next(r for r in rows if r["name"] == tasks[0].name)
    assert no_default["default_us"] is None and no_default["speedup"] is None
