"""The binarize graph pass: what it matches (structure), and whole models against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from tvm import relax

import squeezer
from squeezer.passes.graph.binarize import DECODED, binarize
from squeezer.targets import make_target

TARGET = make_target(2)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dyadic_sign(w: np.ndarray, planes: int = 1, rng=None) -> np.ndarray:
    """Sum of ``planes`` sign planes with power-of-two scales per row: every float sum of
    +-scale products is exact, so torch's float32 result is the exact one."""
    rng = rng or np.random.default_rng(0)
    rows = w.shape[0]
    out = np.zeros_like(w, dtype=np.float32)
    for p in range(planes):
        s = np.where(rng.random(w.shape) < 0.5, 1.0, -1.0).astype(np.float32)
        a = np.ldexp(1.0, rng.integers(-4, 0, rows) - 2 * p).astype(np.float32)
        out = out + a.reshape(-1, *[1] * (w.ndim - 1)) * s
    return out


# -- structure: a Relax module built by hand ---------------------------------------------------
def conv_module(encode, weight: np.ndarray, *, groups=1, strides=(1, 1), padding=(1, 1)):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, weight.shape[1] * groups, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(encode(x)) if encode is not None else x
            y = bb.emit(relax.op.nn.conv2d(a, relax.const(weight), strides=strides,
                                           padding=padding, groups=groups))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def matmul_module(encode, weight: np.ndarray, batch=2):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, weight.shape[0]), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(encode(x)) if encode is not None else x
            out = bb.emit_output(bb.emit(relax.op.matmul(a, relax.const(weight))))
        bb.emit_func_output(out)
    return bb.get()


def where_ge(x):
    return relax.op.where(relax.op.greater_equal(x, relax.const(0.0)), relax.const(1.0),
                          relax.const(-1.0))


def where_lt(x):
    return relax.op.where(relax.op.less(x, relax.const(0.0)), relax.const(-1.0),
                          relax.const(1.0))


def where_gt(x):  # maps 0 to -1: not the binarization the kernels implement
    return relax.op.where(relax.op.greater(x, relax.const(0.0)), relax.const(1.0),
                          relax.const(-1.0))


def uint2(x):
    return relax.op.clip(relax.op.round(x), 0, 3)


def rewrite(mod):
    log, fallback = [], []
    with TARGET:
        out = binarize(log, fallback)(mod)
    out = relax.transform.DeadCodeElimination()(out)
    return out, log, fallback


def run(mod, *arrays):
    import tvm

    ex = tvm.compile(mod, TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


RNG = np.random.default_rng(0)
W_CONV = dyadic_sign(RNG.standard_normal((6, 20, 3, 3)).astype(np.float32))
W_DENSE = dyadic_sign(RNG.standard_normal((10, 50)).astype(np.float32), planes=2).T.copy()


@pytest.mark.parametrize("encode,kind", [(where_ge, "binary"), (where_lt, "binary"),
                                         (relax.op.sign, "sign"), (uint2, "uint2")])
def test_encoded_conv_becomes_a_bit_kernel(encode, kind):
    mod = conv_module(encode, W_CONV)
    new, log, fallback = rewrite(mod)
    script = new.script(show_meta=False)
    assert "bitserial_conv2d" in script and "R.nn.conv2d" not in script
    assert "R.where" not in script and "R.sign" not in script  # the kernel reads x itself
    assert log[0]["kernel"] == "bitserial_conv2d" and kind in log[0]["reason"]
    assert log[0]["bytes"] < log[0]["float_bytes"] / 8 and not fallback
    x = RNG.standard_normal((1, 20, 8, 8)).astype(np.float32) * 2
    x[0, 0, :2] = 0  # exact zeros: sign(0) = 0, where(0 >= 0) = 1
    np.testing.assert_array_equal(run(new, x), run(mod, x))


@pytest.mark.parametrize("encode", [where_ge, relax.op.sign, uint2])
def test_encoded_matmul_becomes_a_bit_kernel(encode):
    mod = matmul_module(encode, W_DENSE)
    new, log, _ = rewrite(mod)
    assert "bitserial_dense" in new.script(show_meta=False)
    assert log[0]["format"] == "residual" and "2 plane" in log[0]["reason"]
    x = RNG.standard_normal((2, 50)).astype(np.float32) * 2
    np.testing.assert_array_equal(run(new, x), run(mod, x))


@pytest.mark.parametrize("case,reason", [
    (dict(encode=None), "float input"),
    (dict(encode=where_gt), "float input"),
    (dict(encode=where_ge, groups=2), "groups 2"),
    (dict(encode=where_ge, strides=(1, 2)), "strides"),
    (dict(encode=where_ge, padding=(1, 0, 0, 1)), "padding"),
])
def test_bit_weights_without_a_kernel_are_stored_packed_and_decoded(case, reason):
    encode = case.pop("encode")
    w = W_CONV[:, :10] if case.get("groups") else W_CONV
    mod = conv_module(encode, w, **case)
    new, log, fallback = rewrite(mod)
    script = new.script(show_meta=False)
    assert "decode_binary" in script and "R.nn.conv2d" in script
    assert log[0]["kernel"] == DECODED and reason in log[0]["reason"]
    assert fallback == [{k: log[0][k] for k in ("op", "where", "reason")}]
    x = RNG.standard_normal((1, 20, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(new, x), run(mod, x))


def test_power_of_two_and_int4_convolutions_are_decoded():
    rng = np.random.default_rng(1)
    pow2 = np.where(rng.random((4, 20, 3, 3)) < 0.3, 0,
                    np.sign(rng.standard_normal((4, 20, 3, 3))) *
                    np.ldexp(1.0, rng.integers(-6, 0, (4, 20, 3, 3)))).astype(np.float32)
    g = rng.standard_normal((4, 5, 32)).astype(np.float32)  # 160 = 5 groups of 32 per row
    s = (np.abs(g).max(axis=2, keepdims=True) / 7).astype(np.float32)
    int4 = (np.round(g / s).astype(np.float32) * s).reshape(4, 160)
    int4 = int4.reshape(4, 10, 4, 4)
    for w, kind in ((pow2, "pow2"), (int4, "int4")):
        bb_mod = conv_module(None, w, padding=(0, 0))
        new, log, _ = rewrite(bb_mod)
        assert f"decode_{kind}" in new.script(show_meta=False)
        assert log[0]["format"] == kind and log[0]["bytes"] < log[0]["float_bytes"] / 4
        x = rng.standard_normal((1, w.shape[1], 8, 8)).astype(np.float32)
        np.testing.assert_array_equal(run(new, x), run(bb_mod, x))


def test_a_weight_used_twice_is_stored_once():
    """HORQ input planes: two products share one weight, and its packed constants."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 20, 8, 8), "float32"))
    w = relax.const(W_CONV)
    with bb.function("main", [x]):
        with bb.dataflow():
            y1 = bb.emit(relax.op.nn.conv2d(bb.emit(where_ge(x)), w, padding=(1, 1)))
            r = bb.emit(relax.op.subtract(x, relax.const(0.5)))
            y2 = bb.emit(relax.op.nn.conv2d(bb.emit(where_ge(r)), w, padding=(1, 1)))
            out = bb.emit_output(bb.emit(relax.op.add(y1, y2)))
        bb.emit_func_output(out)
    new, log, _ = rewrite(bb.get())
    calls = [b.value for blk in new["main"].body.blocks for b in blk.bindings
             if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"]
    assert len(calls) == 2 and len(log) == 2
    weights = [c.args[1].fields[1] for c in calls]
    assert weights[0].same_as(weights[1])


@pytest.mark.parametrize("batch,kernel", [(1, "bitmask_dense"), (2, "bitmask_dense"),
                                          (3, "decode_residual")])
def test_float_input_matmul_masked_at_small_batch(batch, kernel):
    """Two planes: up to 2 rows sum masked floats (4 row-planes), more decode the weight."""
    mod = matmul_module(None, W_DENSE, batch=batch)
    new, log, fallback = rewrite(mod)
    assert kernel in new.script(show_meta=False)
    assert bool(fallback) == (kernel.startswith("decode"))
    x = RNG.standard_normal((batch, 50)).astype(np.float32)
    np.testing.assert_allclose(run(new, x), run(mod, x), rtol=1e-5, atol=1e-5)


def test_float_weights_and_int4_matmuls_are_left_alone():
    w = RNG.standard_normal((50, 10)).astype(np.float32)
    new, log, _ = rewrite(matmul_module(None, w))
    assert "R.matmul" in new.script(show_meta=False) and not log
    # int4 products belong to int4_weights (it has a kernel for them)
    g = w.T.reshape(10, 1, 50)
    s = (np.abs(g).max(axis=2, keepdims=True) / 7).astype(np.float32)
    q = (np.round(g / s).astype(np.float32) * s).reshape(10, 50).T.copy()
    new, log, _ = rewrite(matmul_module(where_ge, q))
    assert "R.matmul" in new.script(show_meta=False) and "call_tir" not in new.script()
    # an encoded input on float weights is reported: it stays a float operator
    new, log, fallback = rewrite(matmul_module(where_ge, w))
    assert log[0]["reason"] == "binary input, float weights" and len(fallback) == 1


# -- whole models through squeezer.compile -----------------------------------------------------
def sign_pm(x):
    return torch.where(x >= 0, 1.0, -1.0)


class BinaryNet(nn.Module):
    """A float stem, then XNOR-style layers (binary inputs and weights, the K map after),
    a HORQ-like 2-plane conv at stride 2, a 1x1 conv on sign(), a BWN linear on float inputs
    (at batch 1: masked sums of its bits)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 70, 3, padding=1)
        self.c1 = nn.Conv2d(70, 40, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(40, 36, 3, stride=2, padding=1, bias=False)
        self.c3 = nn.Conv2d(36, 20, 1)
        self.fc = nn.Linear(20 * 5 * 5, 7)
        rng = np.random.default_rng(4)
        with torch.no_grad():
            for m, planes in ((self.c1, 1), (self.c2, 2), (self.c3, 1), (self.fc, 1)):
                m.weight.copy_(torch.from_numpy(dyadic_sign(m.weight.numpy(), planes, rng)))

    def forward(self, x):
        y = self.stem(x)
        k = y.abs().mean(dim=1, keepdim=True)  # XNOR-Net's K: a float map after the product
        y = self.c1(sign_pm(y)) * nn.functional.avg_pool2d(k, 3, 1, 1) * 0.25
        y = self.c2(sign_pm(y))
        y = self.c3(torch.sign(y))
        return self.fc(y.flatten(1))


def test_binary_model_matches_torch_exactly(tmp_path):
    torch.manual_seed(0)
    model = BinaryNet().eval()
    x = torch.randn(1, 3, 10, 10)
    compiled = squeezer.compile(model, (x,), threads=2, use_records=False,
                                dump_ir=tmp_path)  # verifies against torch
    graph = (tmp_path / "01-graph.py").read_text()
    assert graph.count("R.call_tir(cls.bitserial_conv2d") == 3
    assert graph.count("R.nn.conv2d") == 1  # the stem
    assert graph.count("R.call_tir(cls.bitmask_dense") == 1  # fc: float input, batch 1
    assert compiled.manifest["float_fallback"] == []
    for seed in range(3):
        xi = torch.randn(1, 3, 10, 10, generator=torch.Generator().manual_seed(seed))
        got = compiled(xi.numpy())
        got = got[0] if isinstance(got, list | tuple) else got
        np.testing.assert_allclose(np.asarray(got), model(xi).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_binary_artifact_stores_bits(tmp_path):
    class Wide(nn.Module):
        def __init__(self, binary: bool):
            super().__init__()
            self.conv = nn.Conv2d(256, 256, 3, padding=1, bias=False)
            if binary:
                with torch.no_grad():
                    self.conv.weight.copy_(torch.from_numpy(dyadic_sign(self.conv.weight.numpy())))
            self.binary = binary

        def forward(self, x):
            return self.conv(sign_pm(x)) if self.binary else self.conv(x)

    x = torch.randn(1, 256, 4, 4)
    sizes = {}
    for binary in (False, True):
        model = Wide(binary).eval()
        path = squeezer.compile(model, (x,), threads=2, use_records=False).save(
            tmp_path / f"{binary}.sqz")
        sizes[binary] = path.stat().st_size
    assert sizes[False] > 2e6  # 2.4 MB of float weights (zip-compressed a little)
    assert sizes[True] < sizes[False] / 10  # 74 KB of bits and scales, plus code


def test_onnx_export_takes_the_same_path(tmp_path):
    """Where(GreaterOrEqual(x, 0), 1, -1) and Sign from an ONNX file: the same kernels."""
    torch.manual_seed(1)
    model = BinaryNet().eval()
    x = torch.randn(1, 3, 10, 10)
    path = tmp_path / "binary.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"])
    compiled = squeezer.compile(str(path), {"x": x.numpy()}, threads=2, use_records=False,
                                dump_ir=tmp_path / "ir")  # verifies against onnxruntime
    graph = (tmp_path / "ir" / "01-graph.py").read_text()
    assert graph.count("R.call_tir(cls.bitserial_conv2d") == 3
    assert graph.count("R.call_tir(cls.bitmask_dense") == 1
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, list | tuple) else got
    np.testing.assert_allclose(np.asarray(got), model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
