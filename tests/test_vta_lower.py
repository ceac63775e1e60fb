"""VTA layer compiler: every layer kind bit-exact against its reference on the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from squeezer.targets.vta.config import from_json, load_config
from squeezer.targets.vta.isa import Buffer, Load
from squeezer.targets.vta.layer import ConvLayer, DenseLayer, Knobs, LayerError, Requant32
from squeezer.targets.vta.lower import (
    compile_layer,
    footprint,
    padding_supported,
    prepare,
    shape_of,
)
from squeezer.targets.vta.sim import SimDriver


def requant(rng: np.random.Generator, c: int, out: str = "uint8") -> Requant32:
    lo, hi = (0, 255) if out == "uint8" else (-128, 127)
    return Requant32(offset=rng.integers(-3000, 3000, c), pre=rng.integers(0, 3, c),
                     mult=rng.integers(1, 1 << 12, c), rounding=rng.integers(0, 1 << 14, c),
                     post=rng.integers(12, 16, c), lo=lo, hi=hi, out_dtype=out)


def inputs(rng: np.random.Generator, layer, binary: bool = False) -> np.ndarray:
    if binary:
        return rng.choice([-1, 1], layer.in_shape)
    lo, hi = (0, 256) if layer.in_dtype == "uint8" else (-128, 128)
    return rng.integers(lo, hi, layer.in_shape)


def run_exact(layer, config: str, knobs: Knobs | None = None, binary: bool = False):
    rng = np.random.default_rng(7)
    lp = compile_layer(layer, config, knobs)
    x = inputs(rng, layer, binary)
    y, counters = lp.run(SimDriver(config), x)
    np.testing.assert_array_equal(y, layer.reference(x))
    assert y.dtype == np.dtype(layer.requant.out_dtype)
    return lp, counters


CONVS = [  # in_shape, out channels, kernel, stride, padding, in dtype, zero point
    ((1, 19, 9, 8), 21, 3, (2, 2), (1, 1, 1, 1), "uint8", 0),
    ((1, 33, 5, 5), 40, 1, (1, 1), (0, 0, 0, 0), "int8", 0),
    ((1, 17, 6, 7), 17, 3, (1, 2), (2, 0, 1, 1), "uint8", 128),
    ((1, 17, 6, 7), 9, 3, (1, 1), (1, 1, 1, 1), "int8", -128),
    ((2, 17, 5, 5), 17, 3, (1, 1), (1, 1, 1, 1), "uint8", 0),
    ((1, 16, 7, 7), 16, 1, (2, 2), (0, 0, 0, 0), "uint8", 37),
    ((1, 5, 3, 4), 7, 1, (1, 1), (2, 1, 2, 3), "uint8", 0),  # rows and columns of padding only
]


@pytest.mark.parametrize("case", range(len(CONVS)))
def test_conv_default_knobs_exact(case):
    shape, co, k, stride, pad, dtype, zero = CONVS[case]
    rng = np.random.default_rng(case)
    layer = ConvLayer(f"conv{case}", shape, dtype, zero,
                      rng.integers(-128, 128, (co, shape[1], k, k)), stride, pad,
                      requant(rng, co, "uint8" if case % 2 else "int8"))
    lp, counters = run_exact(layer, "1x16x16")
    oh, ow = layer.out_shape()[2:]
    blocks = -(-co // 16) * -(-shape[1] // 16) * k * k
    assert counters.gemm_ops == shape[0] * oh * ow * blocks  # dense: every block multiplies
    assert counters.dma_bytes["OUT"] == shape[0] * -(-co // 16) * oh * ow * 16


@pytest.mark.parametrize("knobs", [Knobs(tile_h=1, tile_w=2, tile_co=1, tile_ci=1),
                                   Knobs(tile_h=5, tile_w=4, tile_co=2, tile_ci=2,
                                         virtual_threads=1),
                                   Knobs(tile_h=5, tile_w=1, tile_co=1, tile_ci=2)])
def test_conv_explicit_knobs_exact(knobs):
    rng = np.random.default_rng(1)
    layer = ConvLayer("s2", (1, 19, 9, 8), "uint8", 0, rng.integers(-128, 128, (21, 19, 3, 3)),
                      (2, 2), (1, 1, 1, 1), requant(rng, 21))
    lp, _ = run_exact(layer, "1x16x16", knobs)
    assert lp.knobs == knobs and lp.program.meta["knobs"]["tile_h"] == knobs.tile_h


def test_double_buffering_overlaps_modules():
    rng = np.random.default_rng(2)
    layer = ConvLayer("db", (1, 32, 8, 8), "uint8", 0, rng.integers(-128, 128, (32, 32, 3, 3)),
                      (1, 1), (1, 1, 1, 1), requant(rng, 32))
    tiles = {"tile_h": 2, "tile_w": 8, "tile_co": 1, "tile_ci": 1}
    _, one = run_exact(layer, "1x16x16", Knobs(**tiles, virtual_threads=1))
    _, two = run_exact(layer, "1x16x16", Knobs(**tiles, virtual_threads=2))
    assert one.gemm_ops == two.gemm_ops
    assert two.cycles < 0.8 * one.cycles
    assert two.cycles < 1.25 * max(two.busy.values())  # the busiest module sets the pace


@pytest.mark.parametrize("knobs", [None, Knobs(tile_b=5, tile_co=2, tile_ci=5,
                                                virtual_threads=1)])
def test_dense_exact(knobs):
    rng = np.random.default_rng(3)
    layer = DenseLayer("fc", (5, 70), "uint8", 0, rng.integers(-128, 128, (23, 70)),
                       requant(rng, 23))
    lp, _ = run_exact(layer, "1x16x16", knobs)
    assert lp.output_layout.blocked == (5, 2, 1, 1, 1, 16)


def test_int4_weight_core_exact():
    rng = np.random.default_rng(4)
    layer = ConvLayer("i4", (1, 19, 6, 6), "uint8", 0, rng.integers(-8, 8, (21, 19, 3, 3)),
                      (2, 2), (1, 1, 1, 1), requant(rng, 21))
    lp, counters = run_exact(layer, "1x16x16-int4w", Knobs(tile_h=3, tile_w=3, tile_co=2))
    assert counters.dma_bytes["WGT"] == 2 * 2 * 9 * 128  # packed: 128 bytes per 16x16 block
    with pytest.raises(LayerError, match=r"conv 'i8' on 1x16x16-int4w: weights in \[-9, 7\]"):
        compile_layer(ConvLayer("i8", (1, 16, 4, 4), "uint8", 0,
                                np.full((16, 16, 1, 1), 7) - 16 * np.eye(16)[:, :, None, None],
                                (1, 1), (0, 0, 0, 0), requant(rng, 16)), "1x16x16-int4w")


def test_binary_core_exact():
    rng = np.random.default_rng(5)
    conv = ConvLayer("bin", (1, 20, 6, 6), "int8", -1, rng.choice([-1, 1], (18, 20, 3, 3)),
                     (1, 1), (1, 1, 1, 1), requant(rng, 18, "int8"))
    run_exact(conv, "1x16x16-binary", binary=True)
    dense = DenseLayer("binfc", (3, 40), "int8", -1, rng.choice([-1, 1], (18, 40)),
                       requant(rng, 18, "int8"))
    run_exact(dense, "1x16x16-binary", binary=True)
    zero_pad = ConvLayer("b0", (1, 16, 4, 4), "int8", 0, rng.choice([-1, 1], (16, 16, 3, 3)),
                         (1, 1), (1, 1, 1, 1), requant(rng, 16, "int8"))
    with pytest.raises(LayerError, match="pads with -1, the layer's zero point is 0"):
        compile_layer(zero_pad, "1x16x16-binary")


def test_1x32x32_core_exact():
    rng = np.random.default_rng(6)
    layer = ConvLayer("c32", (1, 40, 6, 6), "uint8", 0, rng.integers(-128, 128, (40, 40, 3, 3)),
                      (1, 1), (1, 1, 1, 1), requant(rng, 40))
    run_exact(layer, "1x32x32")


def test_micro_ops_reloaded_when_they_do_not_fit():
    obj = load_config("1x16x16").to_json()
    obj.update(NAME="tiny-uop", LOG_UOP_BUFF_SIZE=9)  # 128 micro-ops
    cfg = from_json(obj)
    rng = np.random.default_rng(8)
    layer = ConvLayer("u", (1, 64, 6, 6), "uint8", 0, rng.integers(-128, 128, (64, 64, 3, 3)),
                      (1, 1), (1, 1, 1, 1), requant(rng, 64))
    lp = compile_layer(layer, cfg, Knobs(tile_h=3, tile_w=6, tile_co=4, tile_ci=2))
    uop_loads = [i for i in lp.program.instructions if isinstance(i, Load)
                 and i.buffer == Buffer.UOP]
    assert len(uop_loads) > 4 and lp.program.meta["uops"] > cfg.uop_depth
    x = inputs(rng, layer)
    y, _ = lp.run(SimDriver(cfg), x)
    np.testing.assert_array_equal(y, layer.reference(x))


def test_scratchpad_overflow_is_a_compile_error_naming_it():
    rng = np.random.default_rng(9)
    layer = ConvLayer("big", (1, 256, 28, 28), "uint8", 0,
                      rng.integers(-128, 128, (16, 256, 3, 3)), (1, 1), (1, 1, 1, 1),
                      requant(rng, 16))
    knobs = Knobs(tile_h=28, tile_w=28, tile_co=1, tile_ci=16)
    with pytest.raises(LayerError, match=r"conv 'big' on 1x16x16 with Knobs\(.*tile_ci=16.*\): "
                                         r"the INP scratchpad overflows: the schedule needs "
                                         r"28800 entries, the 1x16x16 core has 2048"):
        compile_layer(layer, "1x16x16", knobs)
    cfg = load_config("1x16x16")
    assert footprint(cfg, shape_of(prepare(layer, cfg)), knobs)["INP"] == 28800
    with pytest.raises(LayerError, match="knob tile_h=5 does not divide the y loop of 28"):
        compile_layer(layer, "1x16x16", Knobs(tile_h=5))


def test_padding_rows_only_and_too_much_padding():
    rng = np.random.default_rng(11)
    layer = ConvLayer("p1", (1, 5, 3, 4), "int8", 0, rng.integers(-128, 128, (7, 5, 1, 1)),
                      (1, 1), (2, 1, 2, 3), requant(rng, 7))
    run_exact(layer, "1x16x16", Knobs(tile_h=1, tile_w=1, virtual_threads=1))
    wide = ConvLayer("p16", (1, 5, 3, 4), "int8", 0, layer.weight, (1, 1), (0, 16, 0, 0),
                     layer.requant)
    with pytest.raises(LayerError, match="conv 'p16' .*padding 16 of a x edge exceeds the 15"):
        compile_layer(wide, "1x16x16", Knobs(tile_w=20))


def test_padding_the_core_cannot_express():
    rng = np.random.default_rng(10)
    layer = ConvLayer("zp", (1, 16, 4, 4), "uint8", 37, rng.integers(-128, 128, (16, 16, 3, 3)),
                      (1, 1), (1, 1, 1, 1), requant(rng, 16))
    assert not padding_supported(layer, load_config("1x16x16"))
    with pytest.raises(LayerError, match="zero point 37 .* pad on the CPU"):
        compile_layer(layer, "1x16x16")
    for zero, dtype in ((0, "uint8"), (128, "uint8"), (0, "int8"), (-128, "int8")):
        ok = ConvLayer("zp", (1, 16, 4, 4), dtype, zero, layer.weight, (1, 1), (1, 1, 1, 1),
                       layer.requant)
        assert padding_supported(ok, load_config("1x16x16"))


def test_packed_output_feeds_the_next_layer():
    rng = np.random.default_rng(12)
    first = ConvLayer("l1", (1, 19, 6, 6), "uint8", 0, rng.integers(-128, 128, (21, 19, 3, 3)),
                      (1, 1), (1, 1, 1, 1), requant(rng, 21))
    second = ConvLayer("l2", (1, 21, 6, 6), "uint8", 0, rng.integers(-128, 128, (9, 21, 3, 3)),
                       (2, 2), (1, 1, 1, 1), requant(rng, 9))
    lp1, lp2 = compile_layer(first, "1x16x16"), compile_layer(second, "1x16x16")
    assert lp1.output_layout.blocked == lp2.input_layout.blocked
    assert lp1.output_layout.value_offset == lp2.input_layout.value_offset == -128
    x = rng.integers(0, 256, first.in_shape)
    drv = SimDriver("1x16x16")
    raw = drv.run_program(lp1.program, {"inp": lp1.pack_input(x)}).outputs["out"]
    out = drv.run_program(lp2.program, {"inp": raw}).outputs["out"]
    np.testing.assert_array_equal(lp2.unpack_output(out),
                                  second.reference(first.reference(x)))
