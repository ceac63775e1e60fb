"""Bit-serial conv2d: bit-exact against numpy integer convolutions (odd channel counts, padding,
strides, every activation encoding and weight plane count), schedules, vector popcount."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir

from squeezer.schedules import default_schedule_pass
from squeezer.schedules.bitpack import (
    ActBits,
    alphas_for_conv,
    conv_weight_words,
    pack_bits,
    unpack_bits,
)
from squeezer.schedules.bitserial import bitserial_conv2d_space
from squeezer.schedules.bitserial_conv2d import ConvGeometry, bitserial_conv2d_func
from squeezer.targets.cpu import make_target

TARGET = make_target(2)


def conv_int(a: np.ndarray, s: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Exact integer NCHW convolution (zero padding)."""
    n, _, h, w = a.shape
    o, _, kh, kw = s.shape
    ap = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            win = ap[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("nchw,oc->nohw", win, s[:, :, i, j])
    return out


def reference(x, bits, alpha, act, stride, pad):
    """``sum_p alpha_p * conv(act(x), 2 * bits_p - 1)`` with the plane sums in float32."""
    a = ActBits(act).values(x).astype(np.int64)
    y = np.zeros(1, np.float32)
    for p in range(bits.shape[0]):
        d = conv_int(a, bits[p].astype(np.int64) * 2 - 1, stride, pad).astype(np.float32)
        y = y + alpha[p][None, :, None, None] * d
    return y


def inputs(act, shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    if act == "sign":
        x[rng.random(shape) < 0.2] = 0  # sign(0) = 0, not +-1
    if act == "uint2":
        x = (x * 1.5 + 1.5).astype(np.float32)
        x[rng.random(shape) < 0.1] = 1.5  # a tie: rounds half to even
    return x


def run(geo: ConvGeometry, planes: int, act: str, seed: int = 0, sch_fn=None, target=TARGET):
    rng = np.random.default_rng(seed)
    x = inputs(act, (geo.n, geo.c, geo.h, geo.w), rng)
    bits = rng.random((planes, geo.o, geo.c, geo.kh, geo.kw)) < 0.5
    # dyadic scales: every float operation in the epilogue and the reference is exact
    alpha = (rng.integers(1, 64, (planes, geo.o)) / 32).astype(np.float32)
    func = bitserial_conv2d_func(geo, planes, ActBits(act))
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    if sch_fn is None:
        mod = default_schedule_pass(target)(mod)
        assert "T.vectorized" in mod.script(), "the bit-serial rule did not apply"
    else:
        sch = s_tir.Schedule(mod)
        with target:
            sch_fn(sch)
        mod = sch.mod
    lib = tvm.compile(mod, target)
    dev = tvm.cpu()
    args = [x, conv_weight_words(bits, geo.word_bits), alphas_for_conv(alpha),
            np.zeros((geo.n, geo.o, geo.oh, geo.ow), np.float32)]
    t = [tvm.runtime.tensor(a, dev) for a in args]
    lib(*t)
    return t[-1].numpy(), reference(x, bits, alpha, act, geo.stride, geo.ph), lib


# (n, c, h, w, o, k, stride, pad, word bits, planes, activation): channels off the word size
CASES = [
    (1, 37, 9, 11, 5, 3, 1, 1, 64, 1, "binary"),
    (2, 70, 10, 7, 6, 3, 2, 1, 32, 2, "binary"),
    (1, 65, 9, 9, 4, 3, 2, 0, 64, 3, "binary"),
    (1, 33, 8, 8, 7, 1, 1, 0, 64, 1, "binary"),
    (1, 100, 6, 6, 9, 1, 2, 0, 32, 2, "binary"),
    (1, 19, 7, 8, 6, 3, 1, 1, 32, 2, "sign"),
    (1, 64, 9, 6, 4, 3, 2, 1, 64, 1, "sign"),
    (1, 50, 8, 9, 3, 3, 1, 1, 64, 3, "uint2"),
    (1, 31, 6, 6, 8, 1, 1, 0, 32, 1, "uint2"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_bit_exact(case):
    n, c, h, w, o, k, s, p, wbits, planes, act = case
    got, want, _ = run(ConvGeometry(n, c, h, w, o, k, k, s, p, p, wbits), planes, act)
    np.testing.assert_array_equal(got, want)


def test_padding_counts_zero_not_minus_one():
    """All-ones input and weights: every output counts exactly its in-image taps."""
    geo = ConvGeometry(1, 40, 5, 5, 2, 3, 3, 1, 1, 1, 64)
    func = bitserial_conv2d_func(geo, 1, ActBits("binary"))
    mod = default_schedule_pass(TARGET)(tvm.IRModule({"main": func.with_attr("global_symbol",
                                                                             "main")}))
    lib = tvm.compile(mod, TARGET)
    bits = np.ones((1, 2, 40, 3, 3), bool)
    t = [tvm.runtime.tensor(a, tvm.cpu()) for a in (
        np.ones((1, 40, 5, 5), np.float32), conv_weight_words(bits), np.ones(2, np.float32),
        np.zeros((1, 2, 5, 5), np.float32))]
    lib(*t)
    taps = np.array([2, 3, 3, 3, 2])
    np.testing.assert_array_equal(t[-1].numpy()[0, 0], 40 * np.outer(taps, taps))


def test_tuning_space_schedules_are_exact():
    geo = ConvGeometry(1, 45, 8, 8, 6, 3, 3, 1, 1, 1, 64)
    for seed in range(2):
        got, want, _ = run(geo, 2, "binary", seed=seed, sch_fn=bitserial_conv2d_space)
        np.testing.assert_array_equal(got, want)


def test_vector_popcount_follows_the_target():
    geo = ConvGeometry(1, 64, 8, 8, 8, 3, 3, 1, 1, 1, 64)
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    for target, vector in ((avx512, True), (avx2, False)):
        got, want, lib = run(geo, 1, "binary", target=target)
        np.testing.assert_array_equal(got, want)
        asm = lib.mod.inspect_source("asm")
        assert ("vpopcntq" in asm) == vector
        if not vector:
            assert "popcnt" in asm  # the scalar instruction


def test_pack_bits_round_trip():
    rng = np.random.default_rng(0)
    for wbits in (32, 64):
        bits = rng.random((3, 5, 77)) < 0.5
        packed = pack_bits(bits, wbits)
        assert packed.dtype == np.dtype(f"uint{wbits}") and packed.shape == (3, 5, -(-77 // wbits))
        np.testing.assert_array_equal(unpack_bits(packed, 77), bits)
        # element 0 is bit 0 of word 0 (little-endian), bits past the end are zero
        assert int(packed[0, 0, -1]) >> (77 - (77 // wbits) * wbits) == 0
    assert int(pack_bits(np.array([True] + [False] * 63))[0]) == 1


def test_space_traces_replay_with_every_decision():
    """MetaSchedule replays the space's trace with mutated decisions: every tile must apply."""
    geo = ConvGeometry(1, 45, 6, 6, 6, 3, 3, 1, 1, 1, 64)
    func = bitserial_conv2d_func(geo, 1, ActBits("binary")).with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": func})
    sch = s_tir.Schedule(mod)
    with TARGET:
        bitserial_conv2d_space(sch)
    trace = sch.trace
    samples = [i for i in trace.insts if i.kind.name == "SampleCategorical"]
    assert len(samples) == 2  # rows, then pixel vectors
    for inst in samples[:1]:  # rows: a tile of one row leaves unit loops
        for choice in range(len(inst.attrs[0])):
            replay = s_tir.Schedule(mod)
            trace.with_decision(inst, choice, remove_postproc=True).apply_to_schedule(
                replay, remove_postproc=True)
            assert replay.mod.script() != mod.script()
