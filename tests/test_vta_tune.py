"""VTA tuning: the design space, postprocessor, builder and runner, records and their lookup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tvm
import tvm.s_tir.meta_schedule as ms
from tvm.s_tir import Schedule

from squeezer.targets.vta.config import load_config
from squeezer.targets.vta.layer import ConvLayer, DenseLayer, Knobs, LayerProgram, Requant32
from squeezer.targets.vta.lower import apply_knobs, compile_layer
from squeezer.targets.vta.program import Program
from squeezer.targets.vta.sim import SimDriver
from squeezer.targets.vta.tune import (
    NAIVE,
    best_record,
    compile_tuned,
    knobs_from_records,
    records_dir,
    tune_layers,
)
from squeezer.targets.vta.tune_measure import (
    ScratchpadFits,
    VtaBuilder,
    VtaRunner,
    fits,
    knobs_of_trace,
    layer_task,
    worth_measuring,
)

CFG = load_config("1x16x16")


def requant(rng: np.random.Generator, c: int) -> Requant32:
    return Requant32(offset=rng.integers(-3000, 3000, c), pre=rng.integers(0, 3, c),
                     mult=rng.integers(1, 1 << 12, c), rounding=rng.integers(0, 1 << 14, c),
                     post=rng.integers(12, 16, c), lo=0, hi=255, out_dtype="uint8")


def conv(seed: int = 0, shape=(1, 40, 9, 8), co: int = 33, k: int = 3, stride: int = 1):
    rng = np.random.default_rng(seed)
    return ConvLayer(f"c{seed}", shape, "uint8", 0, rng.integers(-128, 128, (co, shape[1], k, k)),
                     (stride, stride), (k // 2,) * 4, requant(rng, co))


def build(mod: tvm.IRModule):
    return VtaBuilder().build([ms.builder.BuilderInput(mod, tvm.target.Target("llvm"))])[0]


def run_built(layer, path: str, knobs: Knobs, seed: int = 3):
    task = layer_task(layer, CFG)
    lp = LayerProgram(layer, CFG, knobs, Program.load(path), task.spec.input_layout,
                      task.spec.output_layout)
    x = np.random.default_rng(seed).integers(0, 256, layer.in_shape)
    y, counters = lp.run(SimDriver(CFG), x)
    np.testing.assert_array_equal(y, layer.reference(x))
    return counters


@pytest.mark.parametrize("layer", [conv(1), conv(2, (1, 19, 7, 9), 21, 3, 2),
                                   conv(3, (1, 33, 5, 5), 17, 1)], ids=["3x3", "3x3s2", "1x1"])
def test_space_samples_build_bit_exact(layer):
    task = layer_task(layer, CFG)
    seen = set()
    for seed in range(1, 7):
        sch = Schedule(task.mod, seed=seed)
        drawn = apply_knobs(sch, CFG, None)
        knobs = knobs_of_trace(sch.trace)
        assert knobs == drawn  # the trace's decisions are the knobs the schedule got
        assert ScratchpadFits().apply(sch) == (fits(task, knobs)
                                               and worth_measuring(task, knobs))
        res = build(sch.mod)
        if not fits(task, knobs):
            assert res.artifact_path is None and "overflows" in res.error_msg
            continue
        assert res.error_msg is None, res.error_msg
        run_built(layer, res.artifact_path, knobs)
        seen.add(knobs)
    assert len(seen) > 1


def test_dense_task_builds_bit_exact():
    rng = np.random.default_rng(5)
    layer = DenseLayer("fc", (3, 40), "uint8", 0, rng.integers(-128, 128, (21, 40)),
                       requant(rng, 21))
    task = layer_task(layer, CFG)
    sch = Schedule(task.mod, seed=2)
    knobs = apply_knobs(sch, CFG, None)
    res = build(sch.mod)
    assert res.error_msg is None, res.error_msg
    lp = LayerProgram(layer, CFG, knobs, Program.load(res.artifact_path),
                      task.spec.input_layout, task.spec.output_layout)
    x = rng.integers(0, 256, layer.in_shape)
    np.testing.assert_array_equal(lp.run(SimDriver(CFG), x)[0], layer.reference(x))


def test_overflow_rejected_by_postproc_and_builder():
    # 64 input channel blocks x a 9x9 input tile x 2 threads overflows INP (2048 entries).
    layer = conv(4, (1, 1024, 9, 9), 16, 3)
    task = layer_task(layer, CFG)
    big = Knobs(tile_h=9, tile_w=9, tile_co=1, tile_ci=64, virtual_threads=2)
    assert not fits(task, big)
    sch = Schedule(task.mod)
    apply_knobs(sch, CFG, big)
    res = build(sch.mod)  # bypassing the postprocessor: a build error, not a crash
    assert res.artifact_path is None and "scratchpad overflows" in res.error_msg
    # the postprocessor rejects the same draw in the sampled space
    for seed in range(1, 200):
        s = Schedule(task.mod, seed=seed)
        apply_knobs(s, CFG, None)
        k = knobs_of_trace(s.trace)
        if not fits(task, k):
            assert ScratchpadFits().apply(s) is False
            break
    else:
        pytest.fail("no overflowing draw in 200 seeds")


def test_not_a_task_is_a_build_error():
    layer = conv(1)
    mod = tvm.IRModule({"main": layer_task(layer, CFG).mod["main"].without_attr("vta.task")})
    res = build(mod)
    assert res.artifact_path is None and "not a registered VTA layer task" in res.error_msg
    with pytest.raises(ValueError, match="not a trace of the VTA layer space"):
        knobs_of_trace(Schedule(mod).trace)


def test_runner_latency_is_cycles_over_clock(tmp_path):
    layer = conv(2, (1, 19, 7, 9), 21, 3, 2)
    lp = compile_layer(layer, CFG, Knobs(tile_h=2, tile_w=5, tile_co=1, tile_ci=1))
    path = str(tmp_path / "p.npz")
    lp.program.save(path)
    fut = VtaRunner().run([ms.runner.RunnerInput(path, "cpu", [])])[0]
    res = fut.result()
    assert res.error_msg is None
    x = np.random.default_rng(0).integers(0, 256, layer.in_shape)
    _, counters = lp.run(SimDriver(CFG), x)  # functional run: the same timing
    (secs,) = [float(s) for s in res.run_secs]  # MetaSchedule keeps float32 seconds
    assert secs == pytest.approx(counters.cycles / (CFG.clock_mhz * 1e6), rel=1e-7)
    assert round(secs * CFG.clock_mhz * 1e6) == counters.cycles
    bad = VtaRunner().run([ms.runner.RunnerInput(str(tmp_path / "missing.npz"), "cpu", [])])
    assert bad[0].result().error_msg and not bad[0].result().run_secs


def test_records_round_trip(tmp_path):
    layer = conv(6, (1, 48, 6, 6), 32, 3)
    res = tune_layers([layer, layer], "1x16x16", 12, tmp_path, per_iter=6)
    assert res.records_dir == tmp_path / "vta-1x16x16" == records_dir("1x16x16", tmp_path)
    (task,) = res.tasks  # the same layer twice is one task called twice
    # the default knobs' measurement is the task's first record (the search's seed)
    assert task.weight == 2 and res.trials_run == 12 and task.trials == 13
    default = compile_layer(layer, CFG)
    dc = SimDriver(CFG, functional=False).run(default.program.instructions).counters
    assert task.default_seconds == pytest.approx(dc.time_s, rel=1e-12)
    best = best_record(layer, CFG, tmp_path)
    assert best is not None and best.trials == 13 and best.cycles <= dc.cycles
    assert best.baseline_cycles == dc.cycles
    assert best.seconds == pytest.approx(task.best_seconds, rel=1e-7)
    # the recorded knobs compile to exactly the recorded cycles, bit-exact
    lp = compile_layer(layer, CFG, best.knobs)
    x = np.random.default_rng(1).integers(0, 256, layer.in_shape)
    y, counters = lp.run(SimDriver(CFG), x)
    np.testing.assert_array_equal(y, layer.reference(x))
    assert counters.cycles == best.cycles
    # the lookup applies the record only when it beats the default knobs
    looked = knobs_from_records(layer, CFG, tmp_path)
    assert looked == (best.knobs if best.cycles < dc.cycles else None)
    assert compile_tuned(layer, CFG, tmp_path).knobs == (looked or default.knobs)
    # a stored baseline the record beats (the newest baseline counts): the record applies
    from squeezer.tune.records import RecordStore

    RecordStore(write_dir=res.records_dir).commit_baseline(res.tasks[0].mod, 2 * dc.time_s)
    assert knobs_from_records(layer, CFG, tmp_path) == best.knobs
    assert compile_tuned(layer, CFG, tmp_path).knobs == best.knobs
    # another layer (other zero-block pattern) has no record; a resumed run adds to the task
    other = ConvLayer("z", layer.in_shape, "uint8", 0, np.where(
        np.arange(32)[:, None, None, None] < 16, 0, layer.weight), layer.stride, layer.padding,
        layer.requant)
    assert best_record(other, CFG, tmp_path) is None
    again = tune_layers([layer], "1x16x16", 6, tmp_path, per_iter=6)
    assert again.tasks[0].trials == 19 and best_record(layer, CFG, tmp_path).trials == 19


def test_naive_knobs_are_the_space_start():
    layer = conv(1)
    lp = compile_layer(layer, CFG, NAIVE)
    c = SimDriver(CFG, functional=False).run(lp.program.instructions).counters
    d = compile_layer(layer, CFG)
    dc = SimDriver(CFG, functional=False).run(d.program.instructions).counters
    assert NAIVE.virtual_threads == 1 and c.cycles > dc.cycles
    with pytest.raises(Exception, match="trials must be a non-negative integer"):
        tune_layers([layer], CFG, -1)


def test_lookup_in_a_fresh_process(tmp_path):
    """The records name the config's tensor intrinsics: a process that compiled nothing yet
    must still read them (the lookup registers the intrinsics first)."""
    import subprocess
    import sys

    layer = conv(7, (1, 32, 4, 4), 16, 3)
    tune_layers([layer], "1x16x16", 4, tmp_path, per_iter=4)
    best = best_record(layer, CFG, tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from test_vta_tune import conv; "
            "from squeezer.targets.vta.tune import best_record; "
            "b = best_record(conv(7, (1, 32, 4, 4), 16, 3), '1x16x16', sys.argv[1]); "
            "print(b.trials, b.cycles, b.knobs)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path),
                          str(Path(__file__).parent)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "unreadable" not in out.stderr
    assert out.stdout.split()[:2] == [str(best.trials), str(best.cycles)]
