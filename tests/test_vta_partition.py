"""vta_partition on hand-built QDQ graphs: which layers go to the accelerator (structure:
packed tensors between consecutive layers, one pack/unpack at the borders), the result bit-exact
with the CPU vta32 module, the CPU fallback list with its reasons, and the runtime's errors."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import tvm
from test_fold_qdq import SX, SY, c, qdq, weight
from tvm import relax

from squeezer.passes.graph.fold_qdq import fold_qdq
from squeezer.passes.graph.vta_partition import PartitionResult, vta_partition
from squeezer.targets.vta.errors import VtaError
from squeezer.targets.vta.runtime import VtaRuntime
from squeezer.targets.vta.sim import SimDriver


def build(body, shape) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return fold_qdq(requant="vta32")(bb.get())


def conv(bb, d, o, i, k=3, seed=0, relu=True, zp=0, **attrs):
    y = bb.emit(relax.op.nn.conv2d(d, weight(bb, (o, i, k, k), seed=seed), **attrs))
    if relu:
        y = bb.emit(relax.op.nn.relu(y))
    return qdq(bb, y, SY, zp)


def chain_body(bb, x):
    """conv 3->6 (pad 1) -> conv 6->20 (stride 2) -> flatten -> dense 320->10 (requantized)."""
    d = qdq(bb, x, SX, 0)
    d = conv(bb, d, 6, 3, padding=1)
    d = conv(bb, d, 20, 6, seed=1, padding=1, strides=2)
    d = bb.emit(relax.op.reshape(d, (2, 320)))
    w = weight(bb, (320, 10), axis=1, seed=2)
    y = bb.emit(relax.op.matmul(d, w))
    return bb.emit(relax.op.quantize(y, c(SY, "float32"), c(3, "int32"), out_dtype="int8"))


def partition(mod, config="1x16x16"):
    res = PartitionResult()
    return vta_partition(config, res)(mod), res


def run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def ops(mod) -> list[str]:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e.op.name) if isinstance(
        e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    return found


def x_of(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 2).astype(np.float32)


def test_consecutive_layers_stay_packed_and_match_the_cpu_bit_exact():
    mod = build(chain_body, (2, 3, 7, 7))
    new, res = partition(mod)
    assert [type(p.layer).__name__ for p in res.layers] == ["ConvLayer", "ConvLayer",
                                                             "DenseLayer"]
    found = ops(new)
    assert found.count("relax.call_dps_packed") == 3
    assert "relax.nn.conv2d" not in found and "relax.matmul" not in found
    # pack at the input, unpack + pack around the flatten, unpack at the output
    assert found.count("relax.layout_transform") == 4
    runtime = VtaRuntime(res.entries)
    for seed in range(2):
        x = x_of((2, 3, 7, 7), seed)
        np.testing.assert_array_equal(run(new, x), run(mod, x))
    assert set(runtime.counters) == {e.name for e in res.entries}
    assert all(cnt.cycles > 0 and cnt.gemm_ops > 0 for cnt in runtime.counters.values())
    assert [e["op"] for e in res.cpu] == ["quantize"]


def test_cpu_fallbacks_name_their_reasons():
    def body(bb, x):
        d = qdq(bb, x, SX, 0)
        d = conv(bb, d, 4, 1, padding=1, groups=4)  # depthwise
        d = conv(bb, d, 8, 4, seed=3, padding=2, dilation=2)  # dilated
        f = bb.emit(relax.op.nn.conv2d(d, weight(bb, (5, 8, 1, 1), seed=4)))  # float consumer
        return bb.emit(relax.op.nn.max_pool2d(f, (2, 2)))

    mod = build(body, (1, 4, 6, 6))
    new, res = partition(mod)
    assert not res.layers
    reasons = {(e["op"], e["reason"].split(":")[0].split(" (")[0]) for e in res.cpu}
    assert ("nn.conv2d", "grouped conv2d") in reasons
    assert ("nn.conv2d", "dilated conv2d") in reasons
    assert ("nn.conv2d", "its int32 result is not requantized to 8 bits by the vta32 "
                         "epilogue") in reasons
    assert any(e["op"] == "nn.max_pool2d" and e["reason"].startswith("float operator")
               for e in res.cpu)
    assert "relax.call_dps_packed" not in ops(new)


def test_zero_point_the_core_cannot_pad_with_is_padded_on_the_cpu():
    """uint8 zero point 131 with padding: the pad stays a CPU op, the conv goes to VTA; zero
    point 128 (stored as 0) joins the layer."""
    def body(zp):
        def f(bb, x):
            d = qdq(bb, x, SX, zp)
            return conv(bb, d, 6, 3, padding=1, relu=False, zp=zp)
        return f

    for zp, pad_on_cpu in ((131, True), (128, False)):
        mod = build(body(zp), (1, 3, 5, 5))
        new, res = partition(mod)
        assert len(res.layers) == 1
        assert ("relax.nn.pad" in ops(new)) == pad_on_cpu
        assert res.layers[0].layer.padding == ((0, 0, 0, 0) if pad_on_cpu else (1, 1, 1, 1))
        runtime = VtaRuntime(res.entries)  # registered while it lives
        x = x_of((1, 3, 5, 5), 4)
        np.testing.assert_array_equal(run(new, x), run(mod, x))
        assert len(runtime.counters) == 1


def test_a_layer_the_core_refuses_stays_on_the_cpu():
    """int8 weights on the int4-weight core: the layer compiler's reason is reported."""
    mod = build(chain_body, (2, 3, 7, 7))
    new, res = partition(mod, "1x16x16-int4w")
    assert not res.layers and "relax.call_dps_packed" not in ops(new)
    refused = [e for e in res.cpu if e["reason"].startswith("the layer compiler refused")]
    assert len(refused) == 3 and "do not fit" in refused[0]["reason"]


def test_runtime_errors():
    mod = build(chain_body, (2, 3, 7, 7))
    new, res = partition(mod)
    with pytest.raises(VtaError, match="the driver runs config 1x32x32"):
        VtaRuntime(res.entries, SimDriver("1x32x32"))
    with pytest.raises(VtaError, match="at least one layer"):
        VtaRuntime([])
    runtime = VtaRuntime(res.entries)
    entry = res.entries[0]
    with pytest.raises(VtaError, match=f"layer {entry.name}: input int8"):
        runtime.run_layer(entry, np.zeros((1, 1), np.int8))
    packed = tvm.runtime.tensor(np.zeros(entry.in_shape, np.int8))
    out = tvm.runtime.tensor(np.zeros(entry.out_shape, np.int8))
    run_packed = tvm.get_global_func("squeezer.vta.run")
    with pytest.raises(Exception, match="no VTA layer with key 12345"):
        run_packed(packed, 12345, out)
    run_packed(packed, entry.key, out)
    want = runtime.run_layer(entry, np.zeros(entry.in_shape, np.int8))
    np.testing.assert_array_equal(out.numpy(), want)
    del runtime  # a dropped runtime unregisters its layers
    gc.collect()
    with pytest.raises(Exception, match="no VTA layer with key"):
        run_packed(packed, entry.key, out)


def test_knobs_given_per_layer_are_used():
    """A knobs function (what tuning records supply) sets the schedule of the layers it answers
    for; the others keep the default knobs; results stay bit-exact."""
    from squeezer.targets.vta.layer import ConvLayer, Knobs

    mod = build(chain_body, (2, 3, 7, 7))
    chosen = Knobs(tile_b=1, tile_h=1, tile_w=1, tile_co=1, tile_ci=1, virtual_threads=1)
    res = PartitionResult()
    new = vta_partition("1x16x16", res,
                        lambda layer: chosen if isinstance(layer, ConvLayer) else None)(mod)
    assert [p.knobs == chosen for p in res.layers] == [True, True, False]
    assert res.tuned == {e.name for e in res.entries[:2]}
    runtime = VtaRuntime(res.entries)
    x = x_of((2, 3, 7, 7), 9)
    np.testing.assert_array_equal(run(new, x), run(mod, x))
    assert len(runtime.counters) == 3
