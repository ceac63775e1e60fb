"""VTA layer compiler: block sparsity, the TIR it schedules, default knobs and the cost model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from squeezer.targets.vta.config import from_json, load_config
from squeezer.targets.vta.layer import ConvLayer, Knobs, LayerError, Requant32
from squeezer.targets.vta.lower import (
    apply_knobs,
    compile_layer,
    default_knobs,
    estimate,
    footprint,
    layer_primfunc,
    prepare,
    schedule_layer,
    shape_of,
)
from squeezer.targets.vta.lower.intrin import GEMM_CALL, RESET_CALL
from squeezer.targets.vta.lower.schedule import VTHREAD_ATTR
from squeezer.targets.vta.sim import SimDriver


def requant(rng: np.random.Generator, c: int) -> Requant32:
    return Requant32(offset=rng.integers(-3000, 3000, c), pre=rng.integers(0, 3, c),
                     mult=rng.integers(1, 1 << 12, c), rounding=rng.integers(0, 1 << 14, c),
                     post=rng.integers(12, 16, c), lo=0, hi=255, out_dtype="uint8")


def sparse_pair(rng: np.random.Generator, c: int, hw: int, sparsity: float):
    """A layer whose 16x16 weight blocks are zero at ``sparsity``, and the same layer with the
    zero blocks filled with ones (the same nonzero pattern elsewhere, dense)."""
    w = rng.integers(-128, 128, (c, c, 3, 3))
    w[w == 0] = 1
    nb = c // 16
    zero = np.zeros(nb * nb, bool)
    zero[rng.permutation(nb * nb)[:round(sparsity * nb * nb)]] = True
    mask = np.repeat(np.repeat(zero.reshape(nb, nb), 16, 0), 16, 1)[:, :, None, None]
    rq = requant(rng, c)
    sparse = ConvLayer("sparse", (1, c, hw, hw), "uint8", 0, np.where(mask, 0, w), (1, 1),
                       (1, 1, 1, 1), rq)
    dense = ConvLayer("dense", (1, c, hw, hw), "uint8", 0, np.where(mask, 1, w), (1, 1),
                      (1, 1, 1, 1), rq)
    return sparse, dense, int((~zero).sum())


def test_block_sparse_same_result_fewer_cycles_and_bytes():
    rng = np.random.default_rng(0)
    sparse, dense, nnz = sparse_pair(rng, 160, 8, 0.8)  # 10x10 blocks, 20 nonzero
    knobs = Knobs(tile_h=8, tile_w=8, tile_co=10, tile_ci=1)  # each weight group loaded once
    x = rng.integers(0, 256, sparse.in_shape)
    runs = {}
    for layer in (sparse, dense):
        lp = compile_layer(layer, "1x16x16", knobs)
        y, counters = lp.run(SimDriver("1x16x16"), x)
        np.testing.assert_array_equal(y, layer.reference(x))
        runs[layer.name] = (lp, counters)
    (slp, sc), (dlp, dc) = runs["sparse"], runs["dense"]
    assert sc.gemm_ops == 8 * 8 * nnz * 9 and dc.gemm_ops == 8 * 8 * 100 * 9
    assert sc.dma_bytes["WGT"] == nnz * 9 * 256 and dc.dma_bytes["WGT"] == 100 * 9 * 256
    assert slp.program.meta["weight_blocks"] == nnz * 9
    assert slp.program.meta["uops"] < dlp.program.meta["uops"] / 3
    assert sc.cycles < dc.cycles / 3


def test_all_zero_step_is_skipped():
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (32, 32, 3, 3))
    w[:, 16:] = 0  # the second input-channel block multiplies nothing
    layer = ConvLayer("half", (1, 32, 6, 6), "uint8", 0, w, (1, 1), (1, 1, 1, 1),
                      requant(rng, 32))
    lp = compile_layer(layer, "1x16x16", Knobs(tile_h=6, tile_w=6, tile_co=2, tile_ci=1))
    x = rng.integers(0, 256, layer.in_shape)
    y, counters = lp.run(SimDriver("1x16x16"), x)
    np.testing.assert_array_equal(y, layer.reference(x))
    assert lp.program.meta["steps"] == 1
    assert counters.dma_bytes["INP"] == 6 * 6 * 16  # one channel block; padding is filled


def test_schedule_tensorizes_and_uses_scratchpad_scopes():
    rng = np.random.default_rng(2)
    layer = ConvLayer("t", (1, 32, 6, 6), "uint8", 0, rng.integers(-128, 128, (32, 32, 3, 3)),
                      (2, 2), (1, 1, 1, 1), requant(rng, 32))
    cfg = load_config("1x16x16")
    spec = prepare(layer, cfg)
    func = layer_primfunc(cfg, spec.geometry, spec.stages, spec.pad_value)
    assert "conv" in func.script() and "data_pad" in func.script()
    sch = schedule_layer(func, cfg, Knobs(tile_h=3, tile_w=3, tile_co=1, tile_ci=1))
    text = sch.mod["main"].script()
    for needle in (GEMM_CALL, RESET_CALL, "local.inp_buffer", "local.wgt_buffer",
                   "local.acc_buffer", VTHREAD_ATTR):
        assert needle in text
    assert "data_pad" not in text.replace("data_pad_local", "")  # inlined into the input copy
    again = schedule_layer(func, cfg, Knobs(tile_h=3, tile_w=3, tile_co=1, tile_ci=1))
    assert again.mod["main"].script() == text  # knobs -> schedule is a pure function


def test_default_knobs_fit_and_the_model_predicts_the_simulator():
    rng = np.random.default_rng(3)
    cfg = load_config("1x16x16")
    layer = ConvLayer("m", (1, 64, 14, 14), "uint8", 0, rng.integers(-128, 128, (64, 64, 3, 3)),
                      (1, 1), (1, 1, 1, 1), requant(rng, 64))
    shape = shape_of(prepare(layer, cfg))
    knobs = default_knobs(cfg, shape)
    need = footprint(cfg, shape, knobs)
    assert all(need[b] <= cfg.depths[b] for b in need)
    lp = compile_layer(layer, cfg)
    assert lp.knobs == knobs
    _, counters = lp.run(SimDriver(cfg), rng.integers(0, 256, layer.in_shape))
    assert abs(estimate(cfg, shape, knobs) - counters.cycles) < 0.1 * counters.cycles
    assert counters.gemm_utilization > 0.6
    tiny = cfg.to_json()
    tiny.update(NAME="tiny", LOG_WGT_BUFF_SIZE=8)  # one 16x16 block, a 3x3 kernel needs 9
    with pytest.raises(LayerError, match="no schedule fits the tiny scratchpads"):
        default_knobs(from_json(tiny), shape)


@pytest.mark.parametrize("c,hw", [(128, 28), (256, 14)])  # full size, under a second each
def test_resnet18_layer_default_knobs(c, hw):
    rng = np.random.default_rng(4)
    layer = ConvLayer(f"r18_{c}", (1, c, hw, hw), "uint8", 0,
                      rng.integers(-128, 128, (c, c, 3, 3)), (1, 1), (1, 1, 1, 1),
                      requant(rng, c))
    lp = compile_layer(layer, "1x16x16")
    x = rng.integers(0, 256, layer.in_shape)
    t0 = time.perf_counter()
    y, counters = lp.run(SimDriver("1x16x16"), x)
    assert time.perf_counter() - t0 < 10
    np.testing.assert_array_equal(y, layer.reference(x))
    assert counters.gemm_utilization > 0.8


def test_sampled_schedules_compile_exact():
    """The design space of a tuner: tile factors by sample_perfect_tile, virtual threads by
    sample_categorical; the codegen reads everything from the scheduled TIR."""
    from tvm.s_tir import Schedule

    from squeezer.targets.vta.lower.codegen import CodegenInput, generate
    from squeezer.targets.vta.lower.walk import walk

    rng = np.random.default_rng(5)
    cfg = load_config("1x16x16")
    layer = ConvLayer("s", (1, 40, 6, 6), "uint8", 0, rng.integers(-128, 128, (24, 40, 3, 3)),
                      (1, 1), (1, 1, 1, 1), requant(rng, 24))
    spec = prepare(layer, cfg)
    func = layer_primfunc(cfg, spec.geometry, spec.stages, spec.pad_value)
    x = rng.integers(0, 256, layer.in_shape)
    seen = set()
    for seed in range(1, 7):
        sch = Schedule(func, seed=seed)
        knobs = apply_knobs(sch, cfg)
        seen.add(knobs)
        prog = generate(cfg, walk(sch.mod["main"]), CodegenInput(
            "s", spec.weight_blocks, spec.par, spec.pad_min, spec.input_layout.nbytes,
            spec.output_layout.nbytes))
        res = SimDriver(cfg).run_program(prog, {"inp": spec.input_layout.pack(x)})
        np.testing.assert_array_equal(spec.output_layout.unpack(res.outputs["out"]),
                                      layer.reference(x))
        same = schedule_layer(func, cfg, knobs)  # the knobs replay the sampled schedule
        assert same.mod["main"].script() == sch.mod["main"].script()
    assert len(seen) > 1
