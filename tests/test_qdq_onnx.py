"""QDQ models from onnxruntime.quantization.quantize_static through fold_qdq, against
onnxruntime on the same model: within one output quantization step on every element."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from qdq_models import export_onnx, output_step, quantize_onnx, run_ort
from tvm import relax

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, groups=2), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def mlp():
    import torch
    from torch import nn

    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))


def blocks():
    """Depthwise and grouped convs, a residual add, max and (windowed) average pooling."""
    import torch
    from torch import nn

    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.g = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)
            self.mp, self.ap = nn.MaxPool2d(2), nn.AvgPool2d(2)

        def forward(self, x):
            y = torch.relu(self.c1(x))
            y = torch.relu(self.dw(y)) + y
            return self.ap(self.mp(self.g(y)))

    torch.manual_seed(2)
    return Blocks()


MODELS = {"cnn": (small_cnn, (1, 1, 8, 8)), "mlp": (mlp, (1, 1, 8, 8)),
          "blocks": (blocks, (1, 3, 12, 12))}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, digits):
    """Every model quantized per tensor and per channel: the digits models calibrated on digits,
    the blocks model on random data."""
    d = tmp_path_factory.mktemp("qdq")
    rng = np.random.default_rng(0)
    paths = {}
    for name, (make, shape) in MODELS.items():
        f = export_onnx(make(), shape, d / f"{name}.onnx")
        cal = digits.x_train[:32] if shape[1] == 1 else \
            rng.standard_normal((32, *shape[1:])).astype(np.float32)
        for pc in (False, True):
            paths[name, pc] = quantize_onnx(f, d / f"{name}_{int(pc)}.onnx", cal, pc)
    return paths


def compiled(path):
    from squeezer.frontend import import_model
    from squeezer.passes.graph.fold_qdq import fold_qdq

    log: list[dict] = []
    mod = relax.transform.FoldConstant()(fold_qdq(log)(import_model(path).mod))
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    return (lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()), mod, log


def inputs(name, digits, n=24):
    shape = MODELS[name][1]
    if shape[1] == 1:
        return [digits.x_test[i:i + 1] for i in range(n)]
    rng = np.random.default_rng(1)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_onnxruntime(quantized, digits, name, per_channel):
    path = quantized[name, per_channel]
    run, mod, log = compiled(path)
    step = output_step(path)
    exact = total = 0
    xs = inputs(name, digits)
    for x, want in zip(xs, run_ort(path, xs), strict=True):
        got = run(x)
        steps = np.abs(got.astype(np.float64) - want) / step
        assert steps.max() <= 1.001, f"{name}: {steps.max():.2f} steps from onnxruntime"
        exact, total = exact + int((steps < 1e-3).sum()), total + steps.size
    # Exact almost everywhere (measured: all 100 inputs of each model). Not required
    # everywhere: onnxruntime requantizes in float32 (a value within float rounding of a tie
    # may go either way) and its QLinearAveragePool rounds ties of v / s + zp to even, where
    # QuantizeLinear (and fold_qdq) round v / s, then add zp.
    assert exact >= 0.98 * total
    assert log == []


def test_integer_operators_replace_float_ones(quantized):
    # Right after fold_qdq: int8_kernels, next in the graph stage, turns these integer
    # operators into squeezer's int8 kernels.
    _, mod, _ = compiled(quantized["cnn", True])
    calls = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: calls.append(e) if isinstance(
        e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    products = [e for e in calls if e.op.name in ("relax.nn.conv2d", "relax.matmul")]
    assert len(products) == 4
    for e in products:
        assert e.attrs.out_dtype == "int32"
        assert [str(a.ty.dtype) for a in e.args] == ["uint8", "int8"]
    names = [e.op.name for e in calls]
    assert not set(names) & {"relax.nn.avg_pool2d", "relax.mean"}
    # Float only at the edges: the input is quantized once, the output dequantized once.
    assert names.count("relax.quantize") == 1 and names.count("relax.dequantize") == 1


def _per_input_channel_model(path, zero_scale=False):
    """Conv whose int8 weight is dequantized along axis 1 (input channels), by hand."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    ws = (rng.uniform(0.5, 2.0, 3) * 1e-2).astype(np.float32)
    if zero_scale:
        ws[1] = 0.0
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (np.float32(0.031), "xs"), (np.uint8(128), "xz"), (w, "w"), (ws, "ws"),
        (np.zeros(3, np.int8), "wz"), (np.float32(0.047), "ys"), (np.uint8(120), "yz")]]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="dq_w", axis=1),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"], name="dq_out"),
    ]
    graph = helper.make_graph(
        nodes, "per_input_channel",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_per_input_channel_weight_falls_back_and_is_reported(tmp_path, capsys):
    import squeezer
    from squeezer.cli import main

    path = _per_input_channel_model(tmp_path / "axis1.onnx")
    art = tmp_path / "m.sqz"
    # onnxruntime's own fusion of this graph into QLinearConv fails at run time ("filter scale
    # shape invalid"): the reference is its unfused QDQ graph, compared below.
    assert main(["compile", str(path), "-o", str(art), "--no-records", "--threads", "1",
                 "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "left in float" in out and "nn.conv2d" in out and "axis [1]" in out
    assert main(["info", str(art)]) == 0
    assert "left in float" in capsys.readouterr().out

    mod = squeezer.load(art)
    [entry] = mod.manifest["float_fallback"]
    assert entry["op"] == "nn.conv2d" and "axis [1]" in entry["reason"]
    assert "1x3x6x6 -> 1x4x6x6" in entry["where"]
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    assert np.abs(mod(x) - run_ort(path, x, optimize=False)).max() <= 0.047 * 1.001


def test_zero_scale_is_named(tmp_path):
    import squeezer
    from squeezer.errors import SqueezerError

    path = _per_input_channel_model(tmp_path / "zero.onnx", zero_scale=True)
    with pytest.raises(SqueezerError, match=r"dequantize scale must be finite and > 0, got 0"):
        squeezer.compile(path, threads=1)
