"""The vta32 requantization: int32 arithmetic that cannot overflow (property test over random
affines and the extreme accumulators of their bounds), within one step of the int64 form, the
emitted Relax bit-exact with numpy, and ``fold_qdq(requant="vta32")`` on a QDQ graph."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax

from squeezer.passes.graph.fold_qdq import fold_qdq
from squeezer.passes.graph.qdq_emit import emit_requant32
from squeezer.passes.graph.qdq_reps import Affine, Term, requant32_constants, requant_constants

I32 = (-(2**31), 2**31 - 1)


def checked_apply(r, acc: np.ndarray) -> np.ndarray:
    """The vta32 formula in int64 with every intermediate asserted to lie in int32; channels on
    the last axis."""
    def fits(name, x):
        assert I32[0] <= x.min() and x.max() <= I32[1], f"{name} overflows int32"
        return x

    a = np.asarray(acc, np.int64)
    c = [np.asarray(v, np.int64) for v in (r.offset, r.pre, r.mult, r.rounding, r.post)]
    v = fits("acc + offset", a + c[0])
    u = v >> c[1]
    p = fits("u * mult", u * c[2])
    q = fits("p + rounding", p + c[3])
    return np.clip(q >> c[4], r.lo, r.hi)


def extreme_accs(aff: Affine, c: int, rng, n: int = 64) -> np.ndarray:
    """Accumulators at both ends of each channel's bound, and random ones inside."""
    t = aff.terms[0]
    zero = np.broadcast_to(t.zero, (c,)).astype(np.int64)
    bound = np.floor(np.broadcast_to(t.bound, (c,))).astype(np.int64)
    lo, hi = zero - bound, zero + bound
    rows = [lo, hi, zero, lo + 1, hi - 1]
    rows += [rng.integers(lo, hi + 1) for _ in range(n)]
    return np.stack(rows)


def random_affine(rng, c: int, bits: int, lo=-math.inf, hi=math.inf, sign=1.0) -> Affine:
    scale = rng.uniform(0.5, 2.0, c) * 10.0 ** rng.uniform(-5, -1) * sign
    zero = rng.integers(-2000, 2000, c)
    bound = np.floor(rng.uniform(0.5, 1.0, c) * 2.0**bits)
    return Affine((Term(None, scale, zero, bound),), rng.uniform(-3, 3, c), 1, 2, lo, hi)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), c=st.integers(1, 5), bits=st.integers(4, 30),
       zp=st.integers(-128, 255), relu=st.booleans(), negative=st.booleans(),
       out_scale=st.floats(1e-3, 0.5))
def test_no_overflow_and_within_one_step_of_int64(seed, c, bits, zp, relu, negative,
                                                   out_scale):
    rng = np.random.default_rng(seed)
    dtype = "uint8" if zp >= 0 else "int8"
    zp = min(zp, 127) if dtype == "int8" else zp
    aff = random_affine(rng, c, bits, lo=0.0 if relu else -math.inf,
                        sign=-1.0 if negative else 1.0)
    t = aff.terms[0]
    reach = float(np.max(np.abs(t.scale / out_scale) * t.bound))  # largest |output| in steps
    try:
        r = requant32_constants(aff, out_scale, zp, dtype)
    except ValueError as err:
        # only when the unclipped output itself cannot be an int32
        assert reach > 2**30 and "no int32 form" in str(err)
        return
    r64 = requant_constants(aff, out_scale, zp, dtype)
    acc = extreme_accs(aff, c, rng)
    got = checked_apply(r, acc)
    want = r64.apply([acc])
    assert np.abs(got - want).max() <= 1
    assert (got >= r.lo).all() and (got <= r.hi).all()


def test_differs_from_int64_rarely():
    """Over realistic layers (bound of a 3x3x64 conv on uint8 inputs, calibrated-like scales) the
    int32 form equals the int64 form on all but about 1% of the outputs, and is never more than
    one step away."""
    rng = np.random.default_rng(0)
    differ = total = 0
    for _ in range(40):
        c = 16
        w = rng.integers(-127, 128, (c, 576))
        scale = rng.uniform(0.5, 2.0, c) * 1e-4
        aff = Affine((Term(None, scale, 3 * w.sum(1), np.abs(w).sum(1) * 252.0),),
                     rng.uniform(-0.2, 0.2, c), 1, 2, lo=0.0)
        r = requant32_constants(aff, 0.02, 0, "uint8")
        r64 = requant_constants(aff, 0.02, 0, "uint8")
        # accumulators of the size real activations give: a few hundred output steps
        acc = (rng.normal(0, 1, (2000, c)) * 40 / (scale / 0.02)).astype(np.int64) + 3 * w.sum(1)
        got, want = checked_apply(r, acc), r64.apply([acc])
        assert np.abs(got - want).max() <= 1
        differ += int((got != want).sum())
        total += got.size
    # The static bound (every input at 255) leaves 31 - log2(bound * m) bits of output precision:
    # about 1 in 130 outputs lands one step from the int64 form (near a rounding boundary).
    print(f"\nvta32 vs int64: {differ}/{total} outputs differ by one step "
          f"({differ / total:.3%})")
    assert differ / total < 0.015


def test_multiplier_precision_uses_the_bound():
    """A small bound leaves room for a large multiplier: no pre shift, and ``mult * bound``
    within a factor 4 of the int32 limit."""
    aff = Affine((Term(None, np.array([3e-4]), np.array([0]), np.array([4000.0])),),
                 np.zeros(1), 1, 2)
    r = requant32_constants(aff, 0.01, 0, "int8")
    assert int(r.pre[0]) == 0 and 2**29 < int(r.mult[0]) * 4000 < 2**31


def test_rejects_what_int32_cannot_hold():
    two = Affine((Term(None, np.array(1e-3), np.array(0), np.array(10.0)),) * 2, np.zeros(()), 1,
                 2)
    with pytest.raises(ValueError, match="one accumulator"):
        requant32_constants(two, 0.1, 0, "int8")
    big = Affine((Term(None, np.array(1e-3), np.array(0), np.array(2.0**31)),), np.zeros(()), 1,
                 2)
    with pytest.raises(ValueError, match="exceeds int32"):
        requant32_constants(big, 0.1, 0, "int8")
    with pytest.raises(ValueError, match="int8 or uint8"):
        requant32_constants(Affine(two.terms[:1], np.zeros(()), 1, 2), 0.1, 0, "int32")


def test_layer_contract_apply_matches():
    """``Requant32.apply`` (the accelerator side's numpy model) equals this formula."""
    rng = np.random.default_rng(5)
    aff = random_affine(rng, 7, 22, lo=0.0)
    r = requant32_constants(aff, 0.05, 0, "uint8")
    acc = extreme_accs(aff, 7, rng)
    np.testing.assert_array_equal(r.apply(acc.astype(np.int32)), checked_apply(r, acc))


def test_emitted_relax_bit_exact_with_numpy():
    rng = np.random.default_rng(2)
    c = 5
    acc_var = relax.Var("acc", relax.TensorType((3, c, 4, 2), "int32"))
    aff = random_affine(rng, c, 24, lo=0.0, hi=3.0)
    aff = Affine((Term(acc_var, *[getattr(aff.terms[0], f) for f in ("scale", "zero", "bound")]),),
                 aff.bias, 1, 4, aff.lo, aff.hi)
    bb = relax.BlockBuilder()
    with bb.function("main", [acc_var]):
        with bb.dataflow():
            out = bb.emit_output(emit_requant32(bb, aff, 0.031, 5, "uint8"))
        bb.emit_func_output(out)
    mod = bb.get()
    dtypes = {str(b.var.ty.dtype) for blk in mod["main"].body.blocks for b in blk.bindings}
    assert "int64" not in dtypes
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    r = requant32_constants(aff, 0.031, 5, "uint8")
    t = aff.terms[0]
    lo = (t.zero - t.bound).astype(np.int64)[None, :, None, None]
    hi = (t.zero + t.bound).astype(np.int64)[None, :, None, None]
    acc = rng.integers(lo, hi + 1, (3, c, 4, 2))
    acc[0, :, 0, 0], acc[0, :, 0, 1] = lo.ravel(), hi.ravel()
    got = vm["main"](tvm.runtime.tensor(acc.astype(np.int32))).numpy()
    want = checked_apply(r, np.moveaxis(acc, 1, -1))
    np.testing.assert_array_equal(got, np.moveaxis(want, -1, 1).astype(np.uint8))


def _qdq_conv_module():
    from test_fold_qdq import SX, SY, ZX, ZY, c, qdq, weight

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 7, 7), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            d = qdq(bb, x, SX, ZX)
            w = weight(bb, (6, 3, 3, 3))
            y = bb.emit(relax.op.nn.conv2d(d, w, padding=1))
            y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit(relax.op.quantize(y, c(SY, "float32"), c(ZY, "int32"),
                                          out_dtype="uint8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def test_fold_qdq_vta32_close_to_int64_and_int32_only():
    mod = _qdq_conv_module()
    folded = {m: fold_qdq(requant=m)(mod) for m in ("int64", "vta32")}
    text = folded["vta32"].script(show_meta=False)
    assert "int64" not in text and "right_shift" in text
    vms = {m: relax.VirtualMachine(tvm.compile(relax.transform.FoldConstant()(f), "llvm"),
                                   tvm.cpu()) for m, f in folded.items()}
    for seed in range(3):
        x = (np.random.default_rng(seed).standard_normal((1, 3, 7, 7)) * 2).astype(np.float32)
        a, b = (vms[m]["main"](tvm.runtime.tensor(x)).numpy().astype(int)
                for m in ("int64", "vta32"))
        assert np.abs(a - b).max() <= 1
        assert (a == b).mean() > 0.99


def test_vta32_only_for_products_the_accelerator_runs():
    """A depthwise conv's (and a pooling sum's) requantization keeps the exact int64 form."""
    from test_fold_qdq import SX, SY, ZX, c, qdq, weight

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 7, 7), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            d = qdq(bb, x, SX, ZX)
            y = bb.emit(relax.op.nn.conv2d(d, weight(bb, (3, 1, 3, 3)), padding=1, groups=3))
            y = bb.emit(relax.op.quantize(y, c(SY, "float32"), c(0, "int32"), out_dtype="int8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    text = fold_qdq(requant="vta32")(bb.get()).script(show_meta=False)
    assert "int64" in text and "bitwise_and" in text


def test_fold_qdq_rejects_unknown_mode():
    with pytest.raises(ValueError, match="requant must be one of"):
        fold_qdq(requant="int16")
