"""Tiled GEMM programs on the simulator: bit-exact vs numpy for int8, int4, binary cores (odd
sizes), block sparsity, double buffering, the full-size ResNet-18 layer."""

from __future__ import annotations

import time

import numpy as np
import pytest

from squeezer.targets.vta.config import from_json, load_config
from squeezer.targets.vta.errors import ProgramError
from squeezer.targets.vta.gemm_program import (
    Tiling,
    build_gemm,
    choose_tiling,
    gemm_block_ops,
    gemm_reference,
)
from squeezer.targets.vta.sim import SimDriver

M, K, N = 37, 70, 45  # no dimension a multiple of a block


def _cfg(name, **edit):
    obj = load_config(name).to_json()
    obj.update(edit)
    return from_json(obj)


BINARY_W = _cfg("1x16x16", NAME="bw", LOG_WGT_WIDTH=0, LOG_WGT_BUFF_SIZE=15)
BATCH2 = _cfg("1x16x16", NAME="2x16x16", LOG_BATCH=1, LOG_INP_BUFF_SIZE=16,
              LOG_ACC_BUFF_SIZE=17)


def _operands(cfg, rng, m=M, k=K, n=N):
    a = rng.choice([-1, 1], (m, k)) if cfg.inp_bits == 1 else rng.integers(-128, 128, (m, k))
    lo, hi = {8: (-128, 127), 4: (-8, 7), 1: (-1, 1)}[cfg.wgt_bits]
    w = rng.choice([-1, 1], (n, k)) if cfg.wgt_bits == 1 else rng.integers(lo, hi + 1, (n, k))
    return a.astype(np.int8), w.astype(np.int8)


@pytest.mark.parametrize("cfg", ["1x16x16", "1x16x16-int4w", "1x16x16-binary", "1x32x32",
                                 BINARY_W, BATCH2], ids=lambda c: getattr(c, "name", c))
@pytest.mark.parametrize("tiling", [None, Tiling(2, 2, 2), Tiling(3, 1, 5)],
                         ids=["default", "t222", "t315"])
def test_gemm_bit_exact(cfg, tiling):
    cfg = load_config(cfg)
    rng = np.random.default_rng(0)
    a, w = _operands(cfg, rng)
    bias = rng.integers(-20000, 20000, N).astype(np.int32)
    epilogues = [{}, {"bias": bias, "shift": 5, "clip": (-128, 127)}]
    for kw in epilogues:
        gp = build_gemm(cfg, a, w, tiling=tiling, **kw)
        out, c = gp.run(SimDriver(cfg))
        np.testing.assert_array_equal(out, gemm_reference(a, w, **kw))
        assert c.gemm_ops == gemm_block_ops(gp)
        assert c.dma_bytes["OUT"] == -(-M // cfg.batch) * -(-N // cfg.block_out) * \
            cfg.out_block_bytes


def test_binary_core_is_xnor_popcount_with_padding_correction():
    cfg = load_config("1x16x16-binary")
    rng = np.random.default_rng(1)
    a, w = _operands(cfg, rng, k=21)  # 11 padded positions per row
    gp = build_gemm(cfg, a, w, shift=0)
    assert gp.meta["padded_k"] == 11
    out, c = gp.run(SimDriver(cfg))
    dots = a.astype(np.int32) @ w.astype(np.int32).T
    assert dots.min() < 0 < dots.max()
    np.testing.assert_array_equal(out, dots.astype(np.int8))
    assert c.insn_counts["ALU"] > 0  # the correction runs on the ALU
    # new inputs through the same program
    a2, _ = _operands(cfg, rng, k=21)
    out2, _ = gp.run(SimDriver(cfg), a2)
    np.testing.assert_array_equal(out2, gemm_reference(a2, w))


def _block_sparse(rng, cfg, m, k, n, density):
    a, w = _operands(cfg, rng, m, k, n)
    nb, kb = -(-n // 16), -(-k // 16)
    keep = rng.random((nb, kb)) < density
    mask = np.repeat(np.repeat(keep, 16, 0), 16, 1)[:n, :k]
    return a, (w * mask).astype(np.int8), keep


@pytest.mark.parametrize("cfg", ["1x16x16", "1x16x16-int4w"])
def test_block_sparse_skips_zero_blocks(cfg):
    cfg = load_config(cfg)
    rng = np.random.default_rng(2)
    m, k, n = 64, 256, 128
    a, w, keep = _block_sparse(rng, cfg, m, k, n, 0.2)
    t = Tiling(4, 4, 4)
    dense = build_gemm(cfg, a, w, tiling=t, skip_zero_blocks=False, shift=8, clip=(-128, 127))
    sparse = build_gemm(cfg, a, w, tiling=t, shift=8, clip=(-128, 127))
    out_d, cd = dense.run(SimDriver(cfg))
    out_s, cs = sparse.run(SimDriver(cfg))
    ref = gemm_reference(a, w, shift=8, clip=(-128, 127))
    np.testing.assert_array_equal(out_d, ref)
    np.testing.assert_array_equal(out_s, ref)
    mt = m // t.tm
    assert sparse.nonzero_blocks == keep.sum() and dense.nonzero_blocks == keep.size
    assert cs.gemm_ops == m * keep.sum() and cd.gemm_ops == m * keep.size
    # every weight block is loaded once per row tile; zero blocks never
    assert cs.dma_bytes["WGT"] == mt * keep.sum() * cfg.wgt_block_bytes
    assert cd.dma_bytes["WGT"] == mt * keep.size * cfg.wgt_block_bytes
    assert cs.dma_bytes["INP"] <= cd.dma_bytes["INP"]
    assert cs.cycles < 0.5 * cd.cycles


def test_double_buffering_overlaps_load_compute_store():
    cfg = load_config("1x16x16")
    rng = np.random.default_rng(3)
    a, w = _operands(cfg, rng, 128, 512, 128)
    t = Tiling(32, 4, 8)
    runs = {}
    for db in (True, False):
        gp = build_gemm(cfg, a, w, tiling=t, double_buffer=db, shift=10, clip=(-128, 127))
        out, runs[db] = gp.run(SimDriver(cfg))
        np.testing.assert_array_equal(out, gemm_reference(a, w, shift=10, clip=(-128, 127)))
    on, off = runs[True], runs[False]
    assert on.gemm_ops == off.gemm_ops and on.dma_bytes["WGT"] == off.dma_bytes["WGT"]
    assert on.cycles < 0.8 * off.cycles
    # one buffer: a step's loads wait for the previous GEMM, so load and GEMM never overlap
    assert off.cycles >= off.busy["load"] + off.gemm_ops


def test_tiling_that_overflows_a_scratchpad_is_rejected():
    cfg = load_config("1x16x16")
    a, w = _operands(cfg, np.random.default_rng(4), 64, 512, 64)
    with pytest.raises(ProgramError, match=r"WGT scratchpad: the tiling .* needs 1024 entries "
                                           r"x 2 buffer\(s\), the 1x16x16 core has 1024"):
        build_gemm(cfg, a, w, tiling=Tiling(4, 4, 256))
    with pytest.raises(ProgramError, match=r"weights: a 4-bit core takes values in \[-8, 7\]"):
        build_gemm("1x16x16-int4w", a, w)
    t = choose_tiling(cfg, 64, 512, 64)
    assert build_gemm(cfg, a, w, tiling=t).tiling == t


def test_resnet18_conv_layer_simulates_fast():
    """256->256 3x3 conv at 14x14 as an im2col GEMM (196 x 2304 x 256), full size."""
    cfg = load_config("1x16x16")
    rng = np.random.default_rng(5)
    a, w = _operands(cfg, rng, 196, 2304, 256)
    t0 = time.perf_counter()
    gp = build_gemm(cfg, a, w, shift=12, clip=(-128, 127))
    out, c = gp.run(SimDriver(cfg))
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(out, gemm_reference(a, w, shift=12, clip=(-128, 127)))
    assert c.gemm_ops == 196 * 144 * 16
    assert elapsed < 10, elapsed
    assert c.gemm_utilization > 0.5


def test_missing_token_is_reported_as_a_race():
    """Without the compute -> load tokens, the load of step 2 overwrites the buffer half the GEMM
    of step 0 reads while it runs: the simulator names both instructions."""
    from dataclasses import replace

    from squeezer.targets.vta.hazards import RaceError
    from squeezer.targets.vta.isa import Load

    cfg = load_config("1x16x16")
    a, w = _operands(cfg, np.random.default_rng(6), 64, 512, 256)
    gp = build_gemm(cfg, a, w, tiling=Tiling(64, 16, 8))
    good, _ = gp.run(SimDriver(cfg))
    np.testing.assert_array_equal(good, gemm_reference(a, w))
    insns = gp.program.instructions
    assert sum(isinstance(i, Load) and i.pop_next for i in insns) == 2
    gp.program.instructions = [replace(i, pop_next=False) if isinstance(i, Load) else i
                               for i in insns]
    with pytest.raises(RaceError, match=r"race: instruction 8 \(LOAD INP, load module\) writes "
                                        r"INP entries \[0, 512\) and instruction 4 \(GEMM, "
                                        r"compute module\) reads \[0, 512\) with no dependency"):
        gp.run(SimDriver(cfg))
