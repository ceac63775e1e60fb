"""fold_qdq on hand-built Relax QDQ graphs: integer results against TVM's own float QDQ graph,
the requantization arithmetic bit-exact against numpy, the emitted structure, the float-fallback
report and bad scales."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import tvm
from tvm import relax

from squeezer.errors import SqueezerError
from squeezer.passes.graph.fold_qdq import fold_qdq
from squeezer.passes.graph.qdq_emit import emit_requant
from squeezer.passes.graph.qdq_reps import Affine, Term, requant_constants

# Scales that are not round decimals: real ties are then as rare as in calibrated models.
SX, ZX, SY, ZY = 0.0312345, 131, 0.0498761, 97


def c(value, dtype):
    return relax.const(np.asarray(value).astype(dtype), dtype)


def qdq(bb, x, scale, zp, dtype="uint8"):
    q = bb.emit(relax.op.quantize(x, c(scale, "float32"), c(zp, "int32"), out_dtype=dtype))
    return bb.emit(relax.op.dequantize(q, c(scale, "float32"), c(zp, "int32")))


def build(bodies, shape, requantize=True) -> tvm.IRModule:
    """x -> quantize/dequantize -> each body -> quantize (or the float result); one output per
    body, so that one compile checks many cases."""
    bodies = bodies if isinstance(bodies, list | tuple) else [bodies]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            d = qdq(bb, x, SX, ZX)
            outs = []
            for body in bodies:
                y = body(bb, d)
                if requantize:
                    y = bb.emit(relax.op.quantize(y, c(SY, "float32"), c(ZY, "int32"),
                                                  out_dtype="uint8"))
                outs.append(y)
            out = bb.emit_output(relax.Tuple(outs) if len(outs) > 1 else outs[0])
        bb.emit_func_output(out)
    return bb.get()


def weight(bb, shape, axis=0, per_channel=True, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, shape).astype(np.int8)
    n = shape[axis] if per_channel else 1
    s = (rng.uniform(0.5, 2.0, n) * 2e-3).astype(np.float32).reshape(-1 if per_channel else ())
    z = np.zeros(s.shape, np.int32)
    return bb.emit(relax.op.dequantize(c(w, "int8"), c(s, "float32"), c(z, "int32"), axis=axis))


def bias(bb, n, shape):
    return bb.emit(relax.op.reshape(c(np.linspace(-1, 1, n), "float32"), shape))


def run(mod, x) -> list[np.ndarray]:
    vm = relax.VirtualMachine(tvm.compile(relax.transform.FoldConstant()(mod), "llvm"), tvm.cpu())
    return _outputs(vm, x)


def compare(mod, shape, seeds=3):
    """Integer outputs: within one step everywhere, and exact on >= 99.5% of the elements."""
    log: list[dict] = []
    new = fold_qdq(log)(mod)
    ref_vm, new_vm = (relax.VirtualMachine(tvm.compile(relax.transform.FoldConstant()(m),
                                                       "llvm"), tvm.cpu()) for m in (mod, new))
    total = exact = 0
    for seed in range(seeds):
        x = (np.random.default_rng(seed).standard_normal(shape) * 2).astype(np.float32)
        for want, got in zip(_outputs(ref_vm, x), _outputs(new_vm, x), strict=True):
            want, got = want.astype(np.int64), got.astype(np.int64)
            assert np.abs(got - want).max() <= 1
            total, exact = total + want.size, exact + int((got == want).sum())
    assert exact >= 0.995 * total, f"{total - exact} of {total} outputs off by one"
    return new, log


def _outputs(vm, x) -> list[np.ndarray]:
    out = vm["main"](tvm.runtime.tensor(x))
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def ops(mod) -> list[relax.Call]:
    calls = []
    relax.analysis.post_order_visit(
        mod["main"].body, lambda e: calls.append(e) if isinstance(e, relax.Call) and
        isinstance(e.op, tvm.ir.Op) else None)
    return calls


def conv_body(padding, groups=1, stride=1, cin=6, cout=8, per_channel=True):
    def body(bb, d):
        w = weight(bb, (cout, cin // groups, 3, 3), per_channel=per_channel)
        y = bb.emit(relax.op.nn.conv2d(d, w, strides=stride, padding=padding, groups=groups))
        return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, bias(bb, cout,
                                                                        (1, cout, 1, 1))))))
    return body


def test_conv2d_integer():
    bodies = [conv_body(1), conv_body(0, per_channel=False), conv_body(1, groups=2, stride=2),
              conv_body(1, groups=6, cout=6), conv_body((0, 1, 2, 1))]
    new, log = compare(build(bodies, (1, 6, 9, 9)), (1, 6, 9, 9))
    assert log == []
    convs = [e for e in ops(new) if e.op.name == "relax.nn.conv2d"]
    assert len(convs) == len(bodies)
    for conv in convs:
        assert conv.attrs.out_dtype == "int32"
        assert [str(a.ty.dtype) for a in conv.args] == ["uint8", "int8"]
        assert all(int(p) == 0 for p in conv.attrs.padding)  # zx != 0: padded explicitly
    names = [e.op.name for e in ops(new)]
    assert names.count("relax.nn.pad") == 4 and names.count("relax.right_shift") == 2 * 5
    assert "relax.dequantize" not in names


def test_batch_norm_and_residual_join_the_requantization():
    """A model quantized before its batch norms were folded (conv -> batch_norm -> relu ->
    quantize), and the sum of two such convs: one requantization each, no float op left."""
    def conv_bn(bb, d, seed):
        rng = np.random.default_rng(seed)
        y = bb.emit(relax.op.nn.conv2d(d, weight(bb, (5, 4, 3, 3), seed=seed), padding=1))
        stats = [c(v, "float32") for v in (rng.uniform(0.5, 2, 5), rng.normal(0, 0.3, 5),
                                           rng.normal(0, 0.5, 5), rng.uniform(0.2, 2, 5))]
        bn = bb.emit(relax.op.nn.batch_norm(y, *stats, axis=1, training=False))
        return bb.emit(relax.TupleGetItem(bn, 0))

    def single(bb, d):
        return bb.emit(relax.op.nn.relu(conv_bn(bb, d, 1)))

    def residual(bb, d):
        return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(conv_bn(bb, d, 2),
                                                             conv_bn(bb, d, 3)))))

    new, log = compare(build([single, residual], (1, 4, 6, 6)), (1, 4, 6, 6))
    names = [e.op.name for e in ops(new)]
    assert log == [] and "relax.nn.batch_norm" not in names
    assert names.count("relax.nn.conv2d") == 3 and names.count("relax.multiply") == 3


def test_zero_point_zero_keeps_conv_padding():
    def body(bb, d):
        w = weight(bb, (4, 6, 3, 3))
        relu = qdq(bb, bb.emit(relax.op.nn.relu(d)), 0.0207, 0)
        return bb.emit(relax.op.nn.conv2d(relu, w, padding=1))

    new, log = compare(build(body, (1, 6, 5, 5)), (1, 6, 5, 5))
    [conv] = [e for e in ops(new) if e.op.name == "relax.nn.conv2d"]
    assert [int(p) for p in conv.attrs.padding] == [1, 1, 1, 1] and log == []


def test_matmul_rank3_and_kn_weight():
    def linear(bb, d):  # torch/ONNX Gemm: matmul(x, permute_dims(W[N, K])), x of rank 3
        y = bb.emit(relax.op.matmul(d, bb.emit(relax.op.permute_dims(weight(bb, (7, 9))))))
        return bb.emit(relax.op.add(bias(bb, 7, (7,)), y))

    def kn(bb, d):  # ONNX MatMul: weight (K, N) quantized along axis 1
        return bb.emit(relax.op.matmul(d, weight(bb, (9, 5), axis=1)))

    new, log = compare(build([linear, kn], (2, 3, 9)), (2, 3, 9))
    mm = [e for e in ops(new) if e.op.name == "relax.matmul"]
    assert log == [] and [e.attrs.out_dtype for e in mm] == ["int32", "int32"]
    assert [[int(v) for v in e.args[1].ty.shape.values] for e in mm] == [[9, 7], [9, 5]]


def test_add_pool_and_movement():
    def add(bb, d):
        other = qdq(bb, bb.emit(relax.op.multiply(d, c(0.7, "float32"))), 0.0113579, 3)
        return bb.emit(relax.op.clip(bb.emit(relax.op.add(d, other)), 0, 6))

    bodies = {
        "add-relu6": add,
        "avg-padded": lambda bb, d: bb.emit(relax.op.nn.avg_pool2d(
            d, 3, 2, padding=1, count_include_pad=True)),
        "adaptive-2x2": lambda bb, d: bb.emit(relax.op.nn.adaptive_avg_pool2d(d, (2, 2))),
        "mean": lambda bb, d: bb.emit(relax.op.mean(d, [2, 3], keepdims=True)),
        "max-flatten": lambda bb, d: bb.emit(relax.op.reshape(
            bb.emit(relax.op.nn.max_pool2d(d, 3, 2, padding=1)), (1, -1))),
        "concat-two-scales": lambda bb, d: bb.emit(relax.op.concat(
            [d, qdq(bb, bb.emit(relax.op.negative(d)), 0.0207, 120)], axis=1)),
    }
    new, log = compare(build(list(bodies.values()), (1, 4, 8, 8)), (1, 4, 8, 8))
    assert sorted(e["op"] for e in log) == ["multiply", "negative"], log
    names = {e.op.name for e in ops(new)}
    assert not names & {"relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d", "relax.mean"}
    # Only the two float operators still read a dequantized tensor.
    consumers = [e for e in ops(new) if e.op.name == "relax.dequantize"]
    assert len(consumers) == 1


def test_float_consumer_gets_float_accumulator():
    """No quantize after the conv: the int32 accumulator is converted to float for softmax."""
    def body(bb, d):
        y = bb.emit(relax.op.nn.conv2d(d, weight(bb, (5, 4, 3, 3)), padding=1))
        return bb.emit(relax.op.nn.softmax(bb.emit(relax.op.add(y, bias(bb, 5, (1, 5, 1, 1))))))

    mod = build(body, (1, 4, 6, 6), requantize=False)
    log: list[dict] = []
    new = fold_qdq(log)(mod)
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(new, x)[0], run(mod, x)[0], rtol=1e-4, atol=1e-6)
    assert [e.op.name for e in ops(new) if e.op.name == "relax.nn.conv2d"]
    assert [e.attrs.out_dtype for e in ops(new) if e.op.name == "relax.nn.conv2d"] == ["int32"]
    assert [(e["op"], e["reason"]) for e in log] == [("nn.softmax",
                                                      "no integer form for nn.softmax")]


def test_fallback_report_names_node_and_reason():
    def per_input_channel(bb, d):  # weight scale along axis 1: no per-output-channel form
        return bb.emit(relax.op.nn.conv2d(d, weight(bb, (5, 4, 3, 3), axis=1), padding=1))

    def asymmetric(bb, d):
        w = bb.emit(relax.op.dequantize(c(np.ones((3, 4, 1, 1)), "int8"), c(0.01, "float32"),
                                        c(2, "int32")))
        return bb.emit(relax.op.nn.conv2d(d, w))

    def act_per_channel(bb, d):
        q = bb.emit(relax.op.quantize(d, c([0.02, 0.03, 0.04, 0.05], "float32"),
                                      c([0, 1, 2, 3], "int32"), axis=1, out_dtype="uint8"))
        d2 = bb.emit(relax.op.dequantize(q, c([0.02, 0.03, 0.04, 0.05], "float32"),
                                         c([0, 1, 2, 3], "int32"), axis=1))
        return bb.emit(relax.op.nn.conv2d(d2, weight(bb, (5, 4, 3, 3)), padding=1))

    def act_x_act(bb, d):
        flat = qdq(bb, bb.emit(relax.op.reshape(d, (4, 8, 8))), SX, ZX)
        return bb.emit(relax.op.matmul(d, flat))

    cases = [(per_input_channel, "nn.conv2d", "axis [1]"),
             (asymmetric, "nn.conv2d", "weight zero point is not 0"),
             (act_per_channel, "nn.conv2d", "input quantized per channel (axis 1)"),
             (act_x_act, "matmul", "both operands are activations")]
    _, log = compare(build([case[0] for case in cases], (1, 4, 8, 8)), (1, 4, 8, 8), seeds=1)
    assert len(log) == len(cases), log
    for (body, op, reason), entry in zip(cases, log, strict=True):
        assert entry["op"] == op and reason in entry["reason"], (body.__name__, entry)
        assert entry["where"].startswith("lv") and "->" in entry["where"], entry


def test_model_without_qdq_is_untouched():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    mod, log = bb.get(), []
    assert fold_qdq(log)(mod).same_as(mod) and log == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -0.5])
def test_bad_scales_name_the_node(bad):
    def body(bb, d):
        w = bb.emit(relax.op.dequantize(c(np.ones((3, 4, 1, 1)), "int8"),
                                        c([0.1, bad, 0.1], "float32"), c([0, 0, 0], "int32"),
                                        axis=0))
        return bb.emit(relax.op.nn.conv2d(d, w))

    with pytest.raises(SqueezerError, match=r"lv\d* \(dequantize\): dequantize scale must be "
                                            r"finite and > 0"):
        fold_qdq()(build(body, (1, 4, 4, 4)))


# -- the requantization arithmetic -----------------------------------------------------------
def _exact(xs, aff, scale, zp, qmin=0, qmax=255):
    """Round-half-even of the exact rational value, then + zp and clamp (float quantize)."""
    out = []
    for i in range(xs[0].shape[0]):
        v = Fraction(float(aff.bias.reshape(-1)[0])) / Fraction(scale)
        for x, t in zip(xs, aff.terms, strict=True):
            v += Fraction(float(t.scale.reshape(-1)[0])) / Fraction(scale) * \
                (int(x[i]) - int(t.zero.reshape(-1)[0]))
        out.append(min(qmax, max(qmin, round(v) + zp)))  # Python rounds ties to even
    return np.array(out)


def test_requant_ties_to_even_and_exact_when_dyadic():
    rng = np.random.default_rng(0)
    xs = [rng.integers(-3000, 3000, 4000), rng.integers(0, 256, 4000)]
    terms = (Term(None, np.array(0.25), np.array(-7), np.array(3007.0)),
             Term(None, np.array(0.0625), np.array(128), np.array(128.0)))
    aff = Affine(terms, np.array(0.5), 0, 1)
    r = requant_constants(aff, 0.5, 77, "uint8")
    np.testing.assert_array_equal(r.apply(xs).reshape(-1), _exact(xs, aff, 0.5, 77))


def test_requant_within_rounding_of_exact_on_random_scales():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = float(np.float32(rng.uniform(1e-5, 3.0)))
        x = rng.integers(-2**20, 2**20, 500)
        aff = Affine((Term(None, np.array(m), np.array(11), np.array(2.0**20 + 11)),),
                     np.array(rng.uniform(-3, 3)), 0, 1)
        r = requant_constants(aff, 1.0, -3, "int32")
        exact = _exact([x], aff, 1.0, -3, -2**31, 2**31 - 1)
        got = r.apply([x]).reshape(-1)
        # Rounding the multiplier and bias to 2**-shift moves the value by at most
        # (|x - z| + 2) * 2**-shift: only values that close to a tie may round apart.
        frac = np.array([float((Fraction(m) * (int(v) - 11) + Fraction(float(aff.bias)))
                               % 1) for v in x])
        near_tie = np.abs(frac - 0.5) <= (np.abs(x - 11) + 2) * 2.0 ** -int(r.shift[0])
        assert near_tie.mean() < 0.01
        np.testing.assert_array_equal(got[~near_tie], exact[~near_tie])


def test_emitted_requant_bit_exact_against_numpy():
    """The Relax operators emit_requant writes, compiled, equal Requant.apply in numpy."""
    rng = np.random.default_rng(2)
    a = relax.Var("a", relax.TensorType((3, 5, 4), "int32"))
    b = relax.Var("b", relax.TensorType((3, 5, 4), "uint8"))
    scales = rng.uniform(1e-4, 1e-2, 5)
    aff = Affine((Term(a, scales, rng.integers(-500, 500, 5), np.full(5, 2.0**24)),
                  Term(b, np.array(0.02), np.array(128), np.array(128.0))),
                 rng.uniform(-2, 2, 5), 1, 3, lo=0.0, hi=4.0)
    bb = relax.BlockBuilder()
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(emit_requant(bb, aff, 0.031, 5, "uint8"))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), "llvm"), tvm.cpu())
    xa = rng.integers(-2**24, 2**24, (3, 5, 4)).astype(np.int32)
    xb = rng.integers(0, 256, (3, 5, 4)).astype(np.uint8)
    got = vm["main"](tvm.runtime.tensor(xa), tvm.runtime.tensor(xb)).numpy()
    r = requant_constants(aff, 0.031, 5, "uint8")
    move = [np.moveaxis(v, 1, -1) for v in (xa, xb)]
    want = np.moveaxis(r.apply(move), -1, 1)
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    assert (got <= 5 + round(4.0 / 0.031)).all() and (got >= 5).all()


def test_low_bit_weights_are_left_to_their_passes_not_reported_float():
    """A quantized input times an int4-per-group or ternary constant is the low-bit passes'
    (int4_weights, binarize): neither it nor its bias/activation epilogue is a float fallback;
    the same product with an ordinary float weight is one, and so is what follows it."""
    rng = np.random.default_rng(3)
    scales = rng.uniform(0.01, 0.1, (1, 12)).astype(np.float32)
    int4 = rng.integers(-8, 8, (64, 12)) * scales  # k x n, one scale per output and 64 rows
    ternary = rng.choice([-0.3, 0.0, 0.3], (64, 12))
    plain = rng.standard_normal((64, 12))

    def product(w):
        def body(bb, d):
            flat = bb.emit(relax.op.reshape(d, (1, 64)))
            y = bb.emit(relax.op.matmul(flat, c(w, "float32")))
            y = bb.emit(relax.op.add(y, c(np.linspace(-1, 1, 12), "float32")))
            return bb.emit(relax.op.nn.relu(y))
        return body

    def with_batch_norm(bb, d):  # a tuple-valued op and its field after the product
        flat = bb.emit(relax.op.reshape(d, (1, 64)))
        y = bb.emit(relax.op.matmul(flat, c(int4, "float32")))
        ones, zeros = c(np.ones(12), "float32"), c(np.zeros(12), "float32")
        bn = bb.emit(relax.op.nn.batch_norm(y, ones, zeros, zeros, ones, axis=1))
        return bb.emit(relax.op.clip(bb.emit(relax.TupleGetItem(bn, 0)), -1.0, 1.0))

    mod = build([product(int4), product(ternary), with_batch_norm, product(plain)],
                (1, 4, 4, 4), requantize=False)
    log: list[dict] = []
    fold_qdq(log)(mod)
    assert [e["op"] for e in log] == ["matmul", "add", "nn.relu"], log
    assert "float constant" in log[0]["reason"]
    assert all("left in float" in e["reason"] for e in log[1:]), log
