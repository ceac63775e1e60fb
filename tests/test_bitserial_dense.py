"""Bit-serial dense and the weight decode kernels: bit-exact against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir

from squeezer.passes.graph import weight_formats as wf
from squeezer.schedules import bitdecode, default_schedule_pass
from squeezer.schedules.bitmask_dense import bitmask_dense_func
from squeezer.schedules.bitpack import (
    ActBits,
    alphas_for_dense,
    dense_weight_popcounts,
    dense_weight_words,
    pack_bits,
)
from squeezer.schedules.bitserial import bitmask_dense_space, bitserial_dense_space
from squeezer.schedules.bitserial_dense import bitserial_dense_func
from squeezer.targets.cpu import make_target

TARGET = make_target(2)
DEV = tvm.cpu()


def build(func, sch_fn=None):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    if sch_fn is None:
        mod = default_schedule_pass(TARGET)(mod)
    else:
        sch = s_tir.Schedule(mod)
        with TARGET:
            sch_fn(sch)
        mod = sch.mod
    return tvm.compile(mod, TARGET)


def call(lib, args, out_shape):
    t = [tvm.runtime.tensor(np.ascontiguousarray(a), DEV) for a in args]
    t.append(tvm.runtime.tensor(np.zeros(out_shape, np.float32), DEV))
    lib(*t)
    return t[-1].numpy()


def dense(m, k, n, planes, act, wbits, seed=0, sch_fn=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    if act == "sign":
        x[rng.random(x.shape) < 0.2] = 0
    if act == "uint2":
        x = (x * 1.5 + 1.5).astype(np.float32)
    bits = rng.random((planes, n, k)) < 0.5
    alpha = (rng.integers(1, 64, (planes, n)) / 32).astype(np.float32)
    enc = ActBits(act)
    args = [x, dense_weight_words(bits, wbits), alphas_for_dense(alpha)]
    if not enc.bipolar:
        args.append(dense_weight_popcounts(bits))
    got = call(build(bitserial_dense_func(m, k, n, planes, enc, wbits), sch_fn), args, (m, n))
    a = enc.values(x).astype(np.int64)
    want = np.zeros(1, np.float32)
    for p in range(planes):
        want = want + alpha[p] * (a @ (2 * bits[p].astype(np.int64) - 1).T).astype(np.float32)
    return got, want


@pytest.mark.parametrize("case", [
    (1, 100, 10, 1, "binary", 64),
    (3, 70, 33, 2, "binary", 32),
    (5, 129, 17, 3, "binary", 64),
    (4, 64, 40, 1, "sign", 64),
    (2, 45, 9, 2, "sign", 32),
    (6, 129, 17, 3, "uint2", 64),
    (1, 1000, 70, 1, "binary", 64),
], ids=lambda c: "-".join(map(str, c)))
def test_bit_exact(case):
    got, want = dense(*case)
    np.testing.assert_array_equal(got, want)


def test_tuning_space_schedules_are_exact():
    for seed in range(2):
        got, want = dense(8, 200, 48, 2, "binary", 64, seed=seed, sch_fn=bitserial_dense_space)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("m,k,n,planes", [(1, 100, 10, 1), (2, 64, 17, 2), (3, 1000, 24, 3)])
@pytest.mark.parametrize("space", [False, True])
def test_masked_float_dense_is_exact(m, k, n, planes, space):
    """Float rows times bit planes; small dyadic inputs make every float sum exact."""
    rng = np.random.default_rng(m + k)
    x = (rng.integers(-64, 64, (m, k)) / 16).astype(np.float32)
    bits = rng.random((planes, n, k)) < 0.5
    alpha = (rng.integers(1, 64, (planes, n)) / 32).astype(np.float32)
    lib = build(bitmask_dense_func(m, k, n, planes), bitmask_dense_space if space else None)
    got = call(lib, [x, pack_bits(bits), alpha], (m, n))
    w = sum(alpha[p][:, None] * (2 * bits[p] - 1.0) for p in range(planes))
    np.testing.assert_array_equal(got, (x.astype(np.float64) @ w.T).astype(np.float32))


# -- decode kernels ----------------------------------------------------------------------------
def quantized(kind: str, shape, rng) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    w2 = w.reshape(shape[0], -1)
    a = np.abs(w2).mean(axis=1, keepdims=True, dtype=np.float32)
    if kind == "binary":
        q = np.where(w2 >= 0, a, -a)
    elif kind == "ternary":
        q = np.where(np.abs(w2) > 0.7 * a, np.sign(w2) * a, 0)
    elif kind == "residual":
        s1 = np.where(w2 >= 0, np.float32(1), np.float32(-1))
        r = w2 - a * s1
        a2 = np.abs(r).mean(axis=1, keepdims=True, dtype=np.float32)
        q = a * s1 + a2 * np.where(r >= 0, np.float32(1), np.float32(-1))
    elif kind == "pow2":
        q = np.where(rng.random(w2.shape) < 0.3, 0,
                     np.sign(w2) * np.ldexp(1.0, rng.integers(-10, -2, w2.shape)))
    else:  # int4, groups of 32 along the row
        g = w2.reshape(shape[0], -1, 32)
        s = (np.abs(g).max(axis=2, keepdims=True) / 7).astype(np.float32)
        q = (np.round(g / s).astype(np.float32) * s).reshape(w2.shape)
    return q.astype(np.float32).reshape(shape)


@pytest.mark.parametrize("kind", ["binary", "ternary", "residual", "pow2", "int4"])
@pytest.mark.parametrize("rows_last", [False, True])
def test_decode_is_exact(kind, rows_last):
    rng = np.random.default_rng(1)
    shape = (6, 64) if rows_last else (6, 16, 2, 2)
    w = quantized(kind, shape, rng)
    fmt = wf.detect(w)
    assert fmt.kind == kind
    target = w.T.copy() if rows_last else w
    x = np.zeros((1, 4), np.float32)  # the anchor argument: never read
    if isinstance(fmt, wf.BitPlanes):
        func = bitdecode.planes_decode_func(target.shape, fmt.planes, x.shape, rows_last)
        args = [bitdecode.planes_words(fmt.bits, rows_last), fmt.alpha, x]
    elif isinstance(fmt, wf.Pow2Codes):
        func = bitdecode.pow2_decode_func(target.shape, fmt.e_min, x.shape, rows_last)
        args = [bitdecode.pow2_words(fmt.codes, rows_last), x]
    else:
        func = bitdecode.int4_decode_func(target.shape, fmt.group, x.shape, rows_last)
        args = [bitdecode.int4_nibbles(fmt.codes, rows_last), fmt.scales, x]
    np.testing.assert_array_equal(call(build(func), args, target.shape), target)
