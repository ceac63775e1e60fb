"""The int8_kernels pass: which integer operators it rewrites (structure), and a small integer
Relax module compiled through squeezer's pipeline bit-exact against TVM's own legalized
operators, requantization epilogue fused into each kernel."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from squeezer.passes.graph.int8_kernels import int8_kernels
from squeezer.pipeline import run_pipeline
from squeezer.targets.cpu import make_target

TARGET = make_target(2)


def c(value, dtype: str) -> relax.Expr:
    return relax.const(np.asarray(value).astype(dtype), dtype)


def requant(bb: relax.BlockBuilder, acc, mult: np.ndarray, dtype: str):
    """The shape of ``fold_qdq``'s epilogue: int64 multiply, shift with ties to even, clip."""
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    t = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(acc, "int64")), c(mult, "int64")))
    t = bb.emit(relax.op.add(t, c(1 << 15, "int64")))
    odd = bb.emit(relax.op.bitwise_and(bb.emit(relax.op.right_shift(t, c(16, "int64"))),
                                       c(1, "int64")))
    t = bb.emit(relax.op.right_shift(bb.emit(relax.op.add(t, odd)), c(16, "int64")))
    return bb.emit(relax.op.astype(bb.emit(relax.op.clip(t, lo, hi)), dtype))


def module() -> tvm.IRModule:
    rng = np.random.default_rng(0)

    def w(*shape):
        return c(rng.integers(-128, 128, shape), "int8")

    def m(n, shape):
        return rng.integers(200, 3000, n).reshape(shape)

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 8, 8), "uint8"))
    v = relax.Var("v", relax.TensorType((2, 5, 20), "int8"))
    with bb.function("main", [x, v]):
        with bb.dataflow():
            padded = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 1], "constant", 131.0))
            a = bb.emit(relax.op.nn.conv2d(padded, w(8, 6, 3, 3), out_dtype="int32"))
            a = requant(bb, a, m(8, (1, 8, 1, 1)), "uint8")
            b = bb.emit(relax.op.nn.conv2d(a, w(8, 1, 3, 3), strides=2, padding=1, groups=8,
                                           out_dtype="int32"))
            b = requant(bb, b, m(8, (1, 8, 1, 1)), "int8")
            # 4x4 pixels: one whole vector, the output is written per register tile
            d = bb.emit(relax.op.nn.conv2d(b, w(10, 8, 1, 1), out_dtype="int32"))
            d = requant(bb, d, m(10, (1, 10, 1, 1)), "int8")
            e = bb.emit(relax.op.matmul(v, w(20, 13), out_dtype="int32"))
            e = requant(bb, e, m(13, (13,)), "int8")
            out = bb.emit_output(relax.Tuple([a, d, e]))
        bb.emit_func_output(out)
    return bb.get()


def calls(mod: tvm.IRModule) -> list[relax.Call]:
    found = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: found.append(e) if isinstance(
        e, relax.Call) else None)
    return found


def tvm_ffi_equal(a: tvm.IRModule, b: tvm.IRModule) -> bool:
    import tvm_ffi

    return bool(tvm_ffi.structural_equal(a, b))


def test_structure_integer_products_become_kernels():
    with TARGET:
        new = relax.transform.DeadCodeElimination()(int8_kernels()(module()))
    ops = [e.op.name for e in calls(new) if isinstance(e.op, tvm.ir.Op)]
    assert "relax.nn.conv2d" not in ops and "relax.matmul" not in ops
    assert "relax.nn.pad" not in ops  # absorbed into the kernel's packing (value 131)
    kernels = [new[e.args[0]] for e in calls(new) if isinstance(e.op, tvm.ir.Op)
               and e.op.name == "relax.call_tir"]
    assert [k.attrs["squeezer.kernel"] for k in kernels] == [
        "int8_conv2d", "int8_depthwise", "int8_conv2d", "int8_matmul"]
    assert all(int(k.attrs["op_pattern"]) == 4 for k in kernels)
    pad_kernel = kernels[0].script()
    assert "T.Cast(\"uint8\", 131)" in pad_kernel
    # the prepacked weights and compensation are constants of the call
    consts = [a for e in calls(new) if isinstance(e.op, tvm.ir.Op)
              and e.op.name == "relax.call_tir" for a in e.args[1].fields
              if isinstance(a, tvm.ir.expr.GenericConst)]
    assert len(consts) == 3 * 2 + 1 and all(str(a.ty.dtype) in ("int8", "int32") for a in consts)


def test_other_operators_are_left_alone():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "uint8"))
    f = relax.Var("f", relax.TensorType((1, 4, 6, 6), "float32"))
    wv = relax.Var("wv", relax.TensorType((4, 4, 3, 3), "int8"))
    w = c(np.ones((4, 4, 3, 3)), "int8")
    with bb.function("main", [x, f, wv]):
        with bb.dataflow():
            outs = [
                bb.emit(relax.op.nn.conv2d(x, w, dilation=2, out_dtype="int32")),  # dilated
                bb.emit(relax.op.nn.conv2d(x, wv, out_dtype="int32")),  # weight not constant
                bb.emit(relax.op.nn.conv2d(f, c(np.ones((4, 4, 3, 3)), "float32"))),  # float
            ]
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    mod = bb.get()
    with TARGET:
        new = int8_kernels()(mod)
    assert tvm_ffi_equal(new, mod)
    generic = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})  # no AVX2: nothing to do
    with generic:
        assert tvm_ffi_equal(int8_kernels()(module()), module())


def test_compiled_module_is_bit_exact_with_fused_epilogues():
    mod = module()
    result = run_pipeline(mod, TARGET)
    fused = [gv.name_hint for gv, f in result.module.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc)]
    # each kernel carries its requantization (no separate elementwise function)
    assert len(fused) == 4 and all("int8" in name and "right_shift" in name for name in fused)
    for name in fused:
        script = result.module[name].script()
        assert "vpdpbusd" in script or "pmadd" in script or "depthwise" in name
    got_vm = relax.VirtualMachine(result.executable, tvm.cpu())
    want_vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    rng = np.random.default_rng(1)
    for _ in range(2):
        x = rng.integers(0, 256, (1, 6, 8, 8)).astype("uint8")
        v = rng.integers(-128, 128, (2, 5, 20)).astype("int8")
        args = [tvm.runtime.tensor(x), tvm.runtime.tensor(v)]
        for got, want in zip(got_vm["main"](*args), want_vm["main"](*args), strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
