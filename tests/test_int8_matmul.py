"""The int8 GEMM kernel bit-exact against numpy int64: odd sizes, uint8 and int8 activations over
their full range, the VNNI and the int16 (AVX-512 / AVX2) instruction paths, every schedule of
the tuning space, and the weight packing."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir

from squeezer.schedules import default_schedule_pass
from squeezer.schedules.int8_matmul import (
    int8_matmul_func,
    int8_matmul_space,
    pack_matmul_weight,
    padded_sizes,
)
from squeezer.schedules.vnni import AVX2_I16, AVX512_I16, VNNI, select_isa
from squeezer.targets.cpu import detect_host, make_target

TARGET = make_target(2)
HASWELL = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
SKYLAKE = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
# (M, K, N): every size of {1, 3, 17, 64, 100, 130} in every position
SIZES = [(1, 3, 17), (3, 17, 64), (17, 64, 100), (64, 100, 130), (100, 130, 1), (130, 1, 3),
         (1, 130, 100), (17, 1, 130), (100, 64, 3), (3, 100, 17)]


def full_range(rng, shape, dtype) -> np.ndarray:
    """Random values with the extremes forced in (first row 255 / -128, the rest uniform)."""
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, shape)
    x.reshape(-1, shape[-1])[0] = lo if dtype == "int8" else hi
    return x.astype(dtype)


def case(m, k, n, dtype, isa, seed=0):
    rng = np.random.default_rng(seed)
    x = full_range(rng, (m, k), dtype)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w[:, 0] = -128
    packed, comp = pack_matmul_weight(w, isa, dtype)
    want = x.astype(np.int64) @ w.astype(np.int64)
    return int8_matmul_func((m, k), dtype, n, isa), [x, packed, comp], want


def run_all(cases, target, schedule=None, asm: list | None = None) -> list[np.ndarray]:
    """Compile every case as one module (one LLVM run) and return each output (``asm``
    receives the assembly)."""
    funcs = {f"f{i}": c[0].with_attr("global_symbol", f"f{i}") for i, c in enumerate(cases)}
    mod = tvm.IRModule(funcs)
    if schedule is None:
        mod = default_schedule_pass(target)(mod)
        for gv, func in mod.functions_items():
            assert "vpdpbusd" in func.script() or "pmadd" in func.script(), gv.name_hint
    else:
        mod = schedule(mod)
    lib = tvm.compile(mod, target)
    if asm is not None:
        asm.append(lib.mod.inspect_source("asm"))
    outs = []
    for i, (_, args, want) in enumerate(cases):
        tensors = [tvm.runtime.tensor(a) for a in (*args, np.zeros(want.shape, np.int32))]
        lib[f"f{i}"](*tensors)
        outs.append(tensors[-1].numpy())
    return outs


def test_odd_sizes_full_range_bit_exact():
    isa = select_isa(TARGET)
    cases = [case(m, k, n, dtype, isa, seed=i) for i, (m, k, n) in enumerate(SIZES)
             for dtype in ("uint8", "int8")]
    for (_, _, want), got in zip(cases, run_all(cases, TARGET), strict=True):
        np.testing.assert_array_equal(got, want)


def test_rank3_activation_keeps_its_leading_shape():
    rng = np.random.default_rng(3)
    x = full_range(rng, (2, 5, 24), "int8")
    w = rng.integers(-128, 128, (24, 40)).astype(np.int8)
    isa = select_isa(TARGET)
    packed, comp = pack_matmul_weight(w, isa, "int8")
    func = int8_matmul_func((2, 5, 24), "int8", 40, isa)
    want = np.einsum("bsk,kn->bsn", x.astype(np.int64), w.astype(np.int64))
    [got] = run_all([(func, [x, packed, comp], want)], TARGET)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("target,isa,instr", [(HASWELL, AVX2_I16, "vpmaddwd"),
                                              (SKYLAKE, AVX512_I16, "vpmaddwd")])
def test_int16_paths_without_vnni_are_exact(target, isa, instr):
    """Compiled for CPUs without VNNI (run here: this CPU has their instructions too)."""
    if "avx512f" not in detect_host().features:
        pytest.skip("the test CPU lacks AVX-512: the Skylake build would not run")
    assert select_isa(target) == isa
    cases = [case(m, k, n, dtype, isa, seed=i) for i, (m, k, n) in enumerate(SIZES[:5])
             for dtype in ("uint8", "int8")]
    asm: list[str] = []
    for (_, _, want), got in zip(cases, run_all(cases, target, asm=asm), strict=True):
        np.testing.assert_array_equal(got, want)
    # exactness needs vpmaddwd on widened operands: never vpmaddubsw (saturates) or VNNI
    assert instr in asm[0] and "vpmaddubsw" not in asm[0] and "vpdpbusd" not in asm[0]


def test_tuning_space_schedules_are_exact():
    """Every sampled schedule (tile rows, column chunks, vectors per tile) is bit-exact."""
    isa = select_isa(TARGET)
    base = case(24, 40, 96, "int8", isa, seed=5)
    mod = tvm.IRModule({"main": base[0]})
    traces, cases = [], []
    for seed in range(1, 9):
        sch = s_tir.Schedule(mod, seed=seed)
        with TARGET:
            int8_matmul_space(sch)
        traces.append(sch.trace)
        cases.append((sch.mod["main"], base[1], base[2]))
    assert len({str(t) for t in traces}) > 3
    replays_with_any_decisions(mod, traces)
    outs = run_all(cases, TARGET, schedule=lambda mod: mod)
    for got in outs:
        np.testing.assert_array_equal(got, base[2])


def replays_with_any_decisions(mod: tvm.IRModule, traces: list) -> None:
    """MetaSchedule's mutators replay a trace with other decisions: every sampled trace must
    replay with the decisions of every other one (no structure depending on a sample)."""
    for a in traces:
        for b in traces:
            t = a
            for x, y in zip([i for i in a.insts if i in a.decisions],
                            [i for i in b.insts if i in b.decisions], strict=True):
                t = t.with_decision(x, b.decisions[y], remove_postproc=True)
            with TARGET:
                t.apply_to_schedule(s_tir.Schedule(mod), remove_postproc=True)


def test_weight_packing_layout_and_compensation():
    rng = np.random.default_rng(7)
    w = rng.integers(-128, 128, (10, 21)).astype(np.int8)
    for isa in (VNNI, AVX512_I16, AVX2_I16):
        packed, comp = pack_matmul_weight(w, isa, "int8")
        kp, np_ = padded_sizes(10, 21, isa)
        g, lanes = isa.group, isa.lanes
        assert packed.shape == (np_ // lanes, kp // g, lanes, g) and kp % g == 0
        for k, n in [(0, 0), (9, 20), (5, 17), (3, 8)]:
            assert packed[n // lanes, k // g, n % lanes, k % g] == w[k, n]
        assert packed.astype(np.int64).sum() == w.astype(np.int64).sum()  # padding is zeros
        want = 128 * w.astype(np.int64).sum(0) if isa.shift else np.zeros(21)
        np.testing.assert_array_equal(comp, want)
        assert not pack_matmul_weight(w, isa, "uint8")[1].any()  # unsigned: nothing to undo


def test_matrix_vector_runs_parallel_over_columns():
    """Batch 1: one row per tile, column tiles shared out over the cores."""
    func = int8_matmul_func((1, 256), "uint8", 512, select_isa(TARGET))
    mod = default_schedule_pass(TARGET)(tvm.IRModule({"main": func}))
    script = mod["main"].script()
    assert "T.parallel" in script and ("vpdpbusd" in script or "pmadd" in script)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="int8 \\[K, N\\]"):
        pack_matmul_weight(np.zeros((4, 4), np.float32), VNNI, "uint8")
    with pytest.raises(ValueError, match="uint8 or int8"):
        int8_matmul_func((4, 4), "int16", 8, VNNI)
    generic = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})
    with pytest.raises(ValueError, match="AVX2"):
        select_isa(generic)
