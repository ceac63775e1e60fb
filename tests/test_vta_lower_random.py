"""VTA layer compiler: random layers (every preset, conv and dense, odd shapes, strides,
paddings, zero points, sparse weights) with random knobs, bit-exact on the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from squeezer.targets.vta.config import load_config
from squeezer.targets.vta.layer import ConvLayer, DenseLayer, Knobs, Requant32
from squeezer.targets.vta.lower import compile_layer, prepare
from squeezer.targets.vta.sim import SimDriver

PRESETS = ["1x16x16", "1x16x16-int4w", "1x16x16-binary", "1x32x32"]


def _divisor(rng: np.random.Generator, n: int) -> int:
    return int(rng.choice([d for d in range(1, n + 1) if n % d == 0]))


def _layer(rng: np.random.Generator, preset: str):
    cfg = load_config(preset)
    binary = cfg.inp_bits == 1
    lim = {8: 128, 4: 8, 1: 1}[cfg.wgt_bits]

    def weights(shape):
        if binary:
            return rng.choice([-1, 1], shape)
        w = rng.integers(-lim, lim, shape)
        return w * (rng.random((shape[0], shape[1], *[1] * (len(shape) - 2))) < 0.6)

    dtype = "int8" if binary else str(rng.choice(["uint8", "int8"]))
    zero = -1 if binary else int(rng.choice([0, 128] if dtype == "uint8" else [0, -128]))
    c, o = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    out = str(rng.choice(["uint8", "int8"]))
    rq = Requant32(offset=rng.integers(-5000, 5000, o), pre=rng.integers(0, 3, o),
                   mult=rng.integers(1, 1 << 12, o), rounding=rng.integers(0, 1 << 14, o),
                   post=rng.integers(10, 16, o), lo=0 if out == "uint8" else -128,
                   hi=255 if out == "uint8" else 127, out_dtype=out)
    if rng.random() < 0.25:
        return DenseLayer("fc", (int(rng.integers(1, 7)), c), dtype, zero, weights((o, c)), rq)
    k = int(rng.choice([1, 3]))
    h, w = int(rng.integers(k, 9)), int(rng.integers(k, 9))
    pad = tuple(int(v) for v in rng.integers(0, 3, 4)) if rng.random() < 0.7 else (0, 0, 0, 0)
    stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    return ConvLayer("conv", (int(rng.integers(1, 3)), c, h, w), dtype, zero,
                     weights((o, c, k, k)), stride, pad, rq)


@pytest.mark.parametrize("seed", range(24))
def test_random_layer_and_knobs_exact(seed):
    rng = np.random.default_rng(1000 + seed)
    preset = PRESETS[seed % len(PRESETS)]
    cfg = load_config(preset)
    layer = _layer(rng, preset)
    geo = prepare(layer, cfg).geometry
    oh, ow = geo.out_hw
    knobs = None if seed % 3 == 0 else Knobs(
        _divisor(rng, geo.nb), _divisor(rng, oh), _divisor(rng, ow), _divisor(rng, geo.ob),
        _divisor(rng, geo.cb), int(rng.choice([1, 2])))
    lp = compile_layer(layer, cfg, knobs)
    if cfg.inp_bits == 1:
        x = rng.choice([-1, 1], layer.in_shape)
    else:
        x = rng.integers(0, 256, layer.in_shape) if layer.in_dtype == "uint8" else \
            rng.integers(-128, 128, layer.in_shape)
    y, _ = lp.run(SimDriver(cfg), x)
    np.testing.assert_array_equal(y, layer.reference(x))
