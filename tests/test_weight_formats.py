"""weight_formats: each low-bit format found from the values, exact round trips, rejections."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezer.passes.graph import weight_formats as wf

RNG = np.random.default_rng(0)


def per_row(shape, values_fn, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    return values_fn(w.reshape(shape[0], -1), rng).reshape(shape).astype(np.float32)


def bwn(w2, rng):  # XNOR-Net/BWN: alpha * sign(w), alpha = mean|w| per filter (float32)
    a = np.abs(w2).mean(axis=1, keepdims=True, dtype=np.float32)
    return np.where(w2 >= 0, a, -a)


def twn(w2, rng):  # TWN: threshold 0.7 E|w|, a = mean of the kept magnitudes
    d = 0.7 * np.abs(w2).mean()
    keep = np.abs(w2) > d
    a = (np.abs(w2) * keep).sum(axis=1, keepdims=True) / np.maximum(keep.sum(1, keepdims=True), 1)
    return (np.sign(w2) * keep * a.astype(np.float32)).astype(np.float32)


def horq(order):
    def fn(w2, rng):  # residual binarization, float32 arithmetic in the order HORQ adds
        r, q = w2.copy(), np.zeros_like(w2)
        for _ in range(order):
            a = np.abs(r).mean(axis=1, keepdims=True, dtype=np.float32)
            s = np.where(r >= 0, np.float32(1), np.float32(-1))
            q = (q + a * s).astype(np.float32)
            r = (r - a * s).astype(np.float32)
        return q
    return fn


def inq(w2, rng):  # INQ 5-bit: 0 or +-2^e with 8 exponents below the largest
    e = rng.integers(-9, -1, w2.shape)
    return np.where(rng.random(w2.shape) < 0.25, 0.0, np.sign(w2) * np.ldexp(1.0, e))


def int4(group):
    def fn(w2, rng):
        rows, k = w2.shape
        g = w2.reshape(rows, k // group, group)
        s = (np.abs(g).max(axis=2, keepdims=True) / 7).astype(np.float32)
        return (np.clip(np.round(g / s), -8, 7).astype(np.float32) * s).reshape(rows, k)
    return fn


CASES = [
    ("binary", (16, 9, 3, 3), bwn, 1),
    ("ternary", (12, 20, 3, 3), twn, 2),
    ("residual", (10, 33), horq(2), 2),
    ("residual", (8, 4, 3, 3), horq(3), 3),
    ("pow2", (6, 5, 3, 3), inq, None),
]


@pytest.mark.parametrize("kind,shape,fn,planes", CASES)
def test_found_and_reconstructed_exactly(kind, shape, fn, planes):
    w = per_row(shape, fn)
    f = wf.detect(w)
    assert f is not None and f.kind == kind
    np.testing.assert_array_equal(f.reconstruct(), w)
    if planes is not None:
        assert f.planes == planes and f.bits.shape == (planes, shape[0], w[0].size)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_groups_found_exactly(group):
    w = per_row((8, 256), int4(group), seed=group)
    f = wf.detect(w)
    assert f.kind == "int4" and f.group == group  # the coarsest group that fits
    np.testing.assert_array_equal(f.reconstruct(), w)
    assert f.codes.min() >= -8 and f.codes.max() <= 7


def test_int4_partial_last_group():
    x = RNG.standard_normal((4, 90)).astype(np.float32)
    w = np.empty_like(x)
    for lo in (0, 64):  # groups of 64, the last one 26 long
        g = x[:, lo:lo + 64]
        s = (np.abs(g).max(axis=1, keepdims=True) / 7).astype(np.float32)
        w[:, lo:lo + 64] = np.round(g / s).astype(np.float32) * s
    f = wf.as_int4(w, groups=(64, 32))
    assert f is not None and f.group == 64 and f.scales.shape == (4, 2)
    np.testing.assert_array_equal(f.reconstruct(), w)


def test_binary_bits_are_signs_and_alpha_per_row():
    w = per_row((5, 40), bwn)
    f = wf.as_binary(w)
    np.testing.assert_array_equal(f.bits[0], w >= 0)
    np.testing.assert_array_equal(f.alpha[0], np.abs(w).max(axis=1))


def test_ternary_planes_are_p_and_not_q():
    w = per_row((7, 50), twn)
    f = wf.as_ternary(w)
    np.testing.assert_array_equal(f.bits[1], w > 0)   # p
    np.testing.assert_array_equal(~f.bits[0], w < 0)  # q
    np.testing.assert_array_equal(2 * f.alpha[0], np.abs(w).max(axis=1))


def test_residual_alphas_are_the_horq_scales():
    w2 = np.random.default_rng(3).standard_normal((6, 64)).astype(np.float32)
    w = horq(2)(w2, None)
    f = wf.as_residual(w)
    a1 = np.abs(w2).mean(axis=1, dtype=np.float32)
    got = np.sort(f.alpha, axis=0)[::-1]
    np.testing.assert_allclose(got[0], a1, rtol=1e-6)


def test_zero_rows_are_allowed():
    w = per_row((4, 30), bwn)
    w[2] = 0
    f = wf.detect(w)
    assert f.kind == "binary" and f.alpha[0, 2] == 0
    np.testing.assert_array_equal(f.reconstruct(), w)


def test_float_rounding_is_accepted_within_rtol():
    w = per_row((6, 64), bwn)
    noisy = w * (1 + RNG.uniform(-3e-6, 3e-6, w.shape)).astype(np.float32)
    f = wf.detect(noisy)
    assert f.kind == "binary"
    np.testing.assert_allclose(f.reconstruct(), noisy, rtol=1e-5, atol=0)


@pytest.mark.parametrize("finder,fn,shape", [
    (wf.as_binary, bwn, (6, 64)),
    (wf.as_ternary, twn, (6, 64)),
    (wf.as_pow2, inq, (6, 64)),
])
def test_one_off_value_is_rejected(finder, fn, shape):
    w = per_row(shape, fn)
    assert finder(w) is not None
    bad = w.copy()
    i = np.flatnonzero(bad[3])[0]
    bad[3, i] *= np.float32(0.9)
    assert finder(bad) is None


def test_off_grid_int4_value_is_rejected():
    w = per_row((4, 64), int4(32))
    w[1, 5] += np.abs(w[1, :32]).max() / 7 * 0.4  # between two codes of its group
    assert wf.as_int4(w, groups=(32,)) is None


def test_residual_rejects_more_values_than_planes_allow():
    w = per_row((4, 64), horq(3))
    assert wf.as_residual(w, orders=(2,)) is None
    assert wf.as_residual(w, orders=(3,)) is not None
    four_levels = np.tile(np.array([1.0, 2.0, 3.0, 4.0], np.float32), (3, 4))  # no a1 +- a2
    assert wf.as_residual(four_levels, orders=(2,)) is None


def test_pow2_rejects_wide_or_subnormal_exponents():
    w = np.array([[1.0, 2.0 ** -15, 0.5, -0.25]], np.float32)
    assert wf.as_pow2(w) is None  # 16 exponents
    assert wf.as_pow2(np.array([[2.0 ** -130, 2.0 ** -128]], np.float32)) is None


def test_float_and_bad_weights_are_not_low_bit():
    assert wf.detect(RNG.standard_normal((32, 64)).astype(np.float32)) is None
    w = per_row((4, 16), bwn)
    w[0, 0] = np.nan
    assert wf.detect(w) is None
    w[0, 0] = np.inf
    assert wf.detect(w) is None
    assert wf.detect(np.zeros((0, 3), np.float32)) is None


def test_bit_formats_come_first():
    # every row {-a, 0, a} with a a power of two: ternary (a bit kernel), not pow2 or int4
    t = np.array([[0.5, 0, -0.5, 0.5], [0.25, -0.25, 0, 0]], np.float32)
    assert wf.detect(t).kind == "ternary"
    assert wf.detect(t, formats=("pow2", "int4")).kind == "pow2"


def test_stored_sizes():
    w = per_row((16, 100), bwn)
    assert wf.as_binary(w).nbytes == 16 * 2 * 8 + 16 * 4  # two 64-bit words per row
    t = wf.as_ternary(per_row((16, 100), twn))
    assert t.nbytes == 2 * 16 * 2 * 8 + 2 * 16 * 4
    p = wf.as_pow2(per_row((16, 100), inq))
    assert p.nbytes == 5 * 16 * 2 * 8
    q = wf.as_int4(per_row((16, 128), int4(64)))
    assert q.nbytes == 16 * 64 + 16 * 2 * 4
    assert q.nbytes < 16 * 128 * 4 / 7  # float32: 8 KB


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 70), st.integers(0, 10 ** 6))
def test_residual_round_trip_property(order, rows, k, seed):
    """Any sum of ``order`` scaled sign planes is found with at most ``order`` planes."""
    rng = np.random.default_rng(seed)
    a = (rng.integers(1, 64, (order, rows, 1)) / 16).astype(np.float32)  # exact sums
    s = np.where(rng.random((order, rows, k)) < 0.5, np.float32(-1), np.float32(1))
    w = np.zeros((rows, k), np.float32)
    for i in range(order):
        w = w + a[i] * s[i]
    f = wf.detect(w, formats=("binary", "ternary", "residual"))
    assert f is not None and f.planes <= max(order, 2)
    np.testing.assert_array_equal(f.reconstruct(), w)
