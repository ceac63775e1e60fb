"""Direct conv2d programs on the simulator: bit-exact vs numpy (strides, padding through the LOAD
padding, odd channels, every preset), block sparsity, streamed micro-ops, a ResNet-18 layer."""

from __future__ import annotations

import time

import numpy as np
import pytest

from squeezer.targets.vta.config import from_json, load_config
from squeezer.targets.vta.conv_program import ConvTiling, build_conv2d, conv_reference
from squeezer.targets.vta.errors import ProgramError
from squeezer.targets.vta.sim import SimDriver

CASES = {  # N, C, H, W, O, k, stride, pad
    "3x3s1": (1, 20, 9, 9, 24, 3, 1, 1),
    "3x3s2-batch2": (2, 35, 10, 7, 17, 3, 2, 1),
    "1x1": (1, 16, 6, 6, 40, 1, 1, 0),
    "5x5s2p2": (1, 7, 11, 11, 5, 5, 2, 2),
}


def _operands(cfg, rng, n, c, h, w, o, k):
    x = rng.choice([-1, 1], (n, c, h, w)) if cfg.inp_bits == 1 else \
        rng.integers(-128, 128, (n, c, h, w))
    lo, hi = {8: (-128, 127), 4: (-8, 7), 1: (-1, 1)}[cfg.wgt_bits]
    wt = rng.choice([-1, 1], (o, c, k, k)) if cfg.wgt_bits == 1 else \
        rng.integers(lo, hi + 1, (o, c, k, k))
    return x.astype(np.int8), wt.astype(np.int8)


@pytest.mark.parametrize("cfg", ["1x16x16", "1x16x16-int4w", "1x16x16-binary", "1x32x32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_bit_exact(cfg, case):
    cfg = load_config(cfg)
    n, c, h, w, o, k, stride, pad = CASES[case]
    rng = np.random.default_rng(0)
    x, wt = _operands(cfg, rng, n, c, h, w, o, k)
    kw = {"stride": stride, "padding": pad, "bias": rng.integers(-3000, 3000, o),
          "shift": 4, "clip": (-128, 127)}
    cp = build_conv2d(cfg, x, wt, **kw)
    out, counters = cp.run(SimDriver(cfg))
    pad_value = -1 if cfg.inp_bits == 1 else 0  # zero bytes decode to -1 on a binary core
    np.testing.assert_array_equal(out, conv_reference(x, wt, pad_value=pad_value, **kw))
    oh, ow = cp.shape.out_hw
    assert counters.gemm_ops == -(-n // cfg.batch) * oh * ow * cp.nonzero_blocks


def test_conv_without_epilogue_and_explicit_tiling():
    cfg = load_config("1x16x16")
    x, wt = _operands(cfg, np.random.default_rng(1), 1, 40, 8, 8, 33, 3)
    for t in (ConvTiling(2, 4, 1, 1), ConvTiling(8, 8, 3, 3), ConvTiling(4, 2, 2, 2)):
        for db in (True, False):
            cp = build_conv2d(cfg, x, wt, padding=1, tiling=t, double_buffer=db)
            out, _ = cp.run(SimDriver(cfg))
            np.testing.assert_array_equal(out, conv_reference(x, wt, padding=1))  # low 8 bits


def test_streamed_micro_ops():
    cfg = from_json({**load_config("1x16x16").to_json(), "NAME": "small-uop",
                     "LOG_UOP_BUFF_SIZE": 9})  # 128 micro-ops
    x, wt = _operands(cfg, np.random.default_rng(2), 1, 48, 6, 6, 48, 3)  # 3 channel blocks
    cp = build_conv2d(cfg, x, wt, padding=1, shift=6, clip=(-128, 127),
                      tiling=ConvTiling(3, 6, 3, 2))
    assert cp.meta["uops_resident"] == 0
    out, c = cp.run(SimDriver(cfg))
    np.testing.assert_array_equal(out, conv_reference(x, wt, padding=1, shift=6,
                                                      clip=(-128, 127)))
    # 4 special uops once, then per tile a step of 2 and a step of 1 channel blocks x 3 x 9
    assert c.dma_bytes["UOP"] == 4 * (4 + 2 * (3 * 2 * 9 + 3 * 1 * 9))


def test_block_sparse_conv():
    cfg = load_config("1x16x16")
    rng = np.random.default_rng(3)
    x, wt = _operands(cfg, rng, 1, 64, 8, 8, 64, 3)
    keep = rng.random((4, 4, 3, 3)) < 0.2  # (o block, c block, kh, kw)
    mask = np.repeat(np.repeat(keep, 16, 0), 16, 1)
    wt = (wt * mask).astype(np.int8)
    t = ConvTiling(4, 8, 2, 2)
    runs = {}
    for skip in (False, True):
        cp = build_conv2d(cfg, x, wt, padding=1, tiling=t, skip_zero_blocks=skip, shift=9,
                          clip=(-128, 127))
        out, runs[skip] = cp.run(SimDriver(cfg))
        np.testing.assert_array_equal(out, conv_reference(x, wt, padding=1, shift=9,
                                                          clip=(-128, 127)))
        blocks = keep.sum() if skip else keep.size
        assert cp.nonzero_blocks == blocks
        assert runs[skip].gemm_ops == 64 * blocks
        assert runs[skip].dma_bytes["WGT"] == 2 * blocks * cfg.wgt_block_bytes  # 2 row tiles
    assert runs[True].cycles < 0.5 * runs[False].cycles


def test_bad_conv_arguments():
    cfg = load_config("1x16x16")
    x, wt = _operands(cfg, np.random.default_rng(4), 1, 16, 8, 8, 16, 3)
    with pytest.raises(ProgramError, match=r"th and tw must divide the output size 8x8"):
        build_conv2d(cfg, x, wt, padding=1, tiling=ConvTiling(3, 8, 1, 1))
    with pytest.raises(ProgramError, match=r"padding 16: expected stride >= 1, padding 0..15"):
        build_conv2d(cfg, x, wt, padding=16)
    with pytest.raises(ProgramError, match=r"INP scratchpad: the tiling .* needs"):
        build_conv2d(cfg, np.zeros((1, 512, 40, 40), np.int8), np.zeros((16, 512, 3, 3),
                     np.int8), padding=1, tiling=ConvTiling(40, 40, 1, 32))
    with pytest.raises(ProgramError, match=r"expected x NCHW and w OIHW with equal C"):
        build_conv2d(cfg, x, wt[:, :8])


def test_resnet18_conv_layer_direct():
    """ResNet-18's 256->256 3x3 conv at 14x14, full size, as a direct tiled conv program."""
    cfg = load_config("1x16x16")
    x, wt = _operands(cfg, np.random.default_rng(5), 1, 256, 14, 14, 256, 3)
    kw = {"padding": 1, "shift": 14, "clip": (-128, 127)}
    t0 = time.perf_counter()
    cp = build_conv2d(cfg, x, wt, **kw)
    out, c = cp.run(SimDriver(cfg))
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(out, conv_reference(x, wt, **kw))
    assert c.gemm_ops == 14 * 14 * 16 * 16 * 9
    assert elapsed < 10, elapsed
    assert c.gemm_utilization > 0.8
