"""Layer specs of the VTA target: requant arithmetic, references, packed layouts, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from squeezer.targets.vta.layer import (
    ConvLayer,
    DenseLayer,
    Knobs,
    LayerError,
    PackedLayout,
    Requant32,
)


def _requant(rng: np.random.Generator, c: int, out_dtype: str = "uint8") -> Requant32:
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    return Requant32(offset=rng.integers(-2000, 2000, c), pre=rng.integers(0, 4, c),
                     mult=rng.integers(1, 1 << 14, c), rounding=rng.integers(0, 1 << 15, c),
                     post=rng.integers(10, 20, c), lo=lo, hi=hi, out_dtype=out_dtype)


def _wrap32(v: int) -> int:
    return (v + (1 << 31)) % (1 << 32) - (1 << 31)


def test_requant_apply_matches_int32_wraparound():
    rng = np.random.default_rng(0)
    c = 7
    rq = Requant32(offset=rng.integers(-(1 << 31), 1 << 31, c), pre=rng.integers(0, 32, c),
                   mult=rng.integers(-(1 << 31), 1 << 31, c),
                   rounding=rng.integers(-(1 << 31), 1 << 31, c), post=rng.integers(0, 32, c),
                   lo=-100, hi=90, out_dtype="int8")
    acc = rng.integers(-(1 << 31), 1 << 31, (3, c, 2, 2)).astype(np.int32)
    got = rq.apply(acc, axis=1)
    assert got.dtype == np.int8
    for idx in np.ndindex(acc.shape):
        ch = idx[1]
        v = _wrap32(int(acc[idx]) + int(rq.offset[ch])) >> int(rq.pre[ch])
        v = _wrap32(v * int(rq.mult[ch]))
        v = _wrap32(v + int(rq.rounding[ch])) >> int(rq.post[ch])
        assert got[idx] == min(max(v, -100), 90), idx


def test_requant_dense_axis_and_checks():
    rng = np.random.default_rng(1)
    rq = _requant(rng, 5, "int8")
    acc = rng.integers(-5000, 5000, (4, 5)).astype(np.int32)
    np.testing.assert_array_equal(rq.apply(acc, axis=-1), rq.apply(acc.T[None], axis=1)[0].T)
    with pytest.raises(LayerError, match="int32 accumulators"):
        rq.apply(acc.astype(np.int64), axis=-1)
    with pytest.raises(LayerError, match="post: shifts"):
        Requant32(offset=[0], pre=[0], mult=[1], rounding=[0], post=[32], lo=0, hi=1,
                  out_dtype="int8")
    with pytest.raises(LayerError, match="lo=0, hi=300"):
        Requant32(offset=[0], pre=[0], mult=[1], rounding=[0], post=[0], lo=0, hi=300,
                  out_dtype="uint8")
    with pytest.raises(LayerError, match="mult: shape"):
        Requant32(offset=[0], pre=[0], mult=[1, 2], rounding=[0], post=[0], lo=0, hi=1,
                  out_dtype="int8")


@pytest.mark.parametrize("stride,padding,zero", [((1, 1), (1, 1, 1, 1), 0),
                                                 ((2, 2), (1, 0, 2, 1), 37),
                                                 ((2, 1), (0, 0, 0, 0), 128)])
def test_conv_reference_matches_torch(stride, padding, zero):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (2, 5, 9, 8))
    w = rng.integers(-128, 128, (6, 5, 3, 3))
    layer = ConvLayer("c", x.shape, "uint8", zero, w, stride, padding, _requant(rng, 6))
    pt, pl, pb, pr = padding
    xp = torch.nn.functional.pad(torch.tensor(x, dtype=torch.float64), (pl, pr, pt, pb),
                                 value=float(zero))
    want = torch.nn.functional.conv2d(xp, torch.tensor(w, dtype=torch.float64), stride=stride)
    acc = layer.accumulate(x)
    assert acc.shape == layer.out_shape()
    np.testing.assert_array_equal(acc, want.numpy().astype(np.int64))
    np.testing.assert_array_equal(layer.reference(x),
                                  layer.requant.apply(acc.astype(np.int32), axis=1))


def test_dense_reference():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (3, 20))
    w = rng.integers(-128, 128, (7, 20))
    layer = DenseLayer("d", x.shape, "int8", 0, w, _requant(rng, 7, "int8"))
    assert layer.out_shape() == (3, 7)
    np.testing.assert_array_equal(layer.accumulate(x), x @ w.T)
    np.testing.assert_array_equal(layer.reference(x),
                                  layer.requant.apply((x @ w.T).astype(np.int32), axis=-1))


def test_layer_validation_names_the_field():
    rng = np.random.default_rng(4)
    rq = _requant(rng, 4)
    w = rng.integers(-8, 8, (4, 3, 3, 3))
    with pytest.raises(LayerError, match="conv 'bad': weight"):
        ConvLayer("bad", (1, 5, 8, 8), "uint8", 0, w, (1, 1), (0, 0, 0, 0), rq)
    with pytest.raises(LayerError, match="in_dtype"):
        ConvLayer("bad", (1, 3, 8, 8), "int16", 0, w, (1, 1), (0, 0, 0, 0), rq)
    with pytest.raises(LayerError, match="requant has 4 channels, the weight 5"):
        DenseLayer("bad", (2, 3), "int8", 0, np.ones((5, 3), np.int8), rq)
    with pytest.raises(LayerError, match="does not fit"):
        ConvLayer("bad", (1, 3, 2, 2), "uint8", 0, w, (1, 1), (0, 0, 0, 0), rq)
    with pytest.raises(LayerError, match="virtual_threads"):
        Knobs(virtual_threads=3)
    with pytest.raises(LayerError, match="tile_co"):
        Knobs(tile_co=0)


@pytest.mark.parametrize("dtype,offset", [("uint8", -128), ("int8", 0)])
def test_packed_layout_round_trip(dtype, offset):
    rng = np.random.default_rng(5)
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, (3, 21, 4, 5)).astype(dtype)
    lay = PackedLayout(x.shape, (2, 2, 4, 5, 2, 16), dtype, offset)
    raw = lay.pack(x)
    assert raw.size == lay.nbytes == 2 * 2 * 4 * 5 * 2 * 16
    blocks = raw.view(np.int8).reshape(lay.blocked)
    # element (n=2, c=17, h=3, w=1) lies in batch block 1, channel block 1, lanes (0, 1)
    assert blocks[1, 1, 3, 1, 0, 1] == int(x[2, 17, 3, 1]) + offset
    assert not blocks[1, 1, :, :, 1].any() and not blocks[:, 1, :, :, :, 5:].any()
    np.testing.assert_array_equal(lay.unpack(raw), x)
    dense = x[:, :, 0, 0]
    dlay = PackedLayout(dense.shape, (2, 2, 1, 1, 2, 16), dtype, offset)
    np.testing.assert_array_equal(dlay.unpack(dlay.pack(dense)), dense)
    with pytest.raises(LayerError, match="expected shape"):
        lay.pack(dense)
