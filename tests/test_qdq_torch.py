"""torch models with ``quantized_decomposed`` QDQ ops (what squeezer's quantizer writes) through
squeezer.compile: integer operators, verified against torch eager within one step."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OUT_SCALE = 0.0371


def qdq_net(nan_scale: bool = False):
    """Conv (per-channel int8 weight) + bias + ReLU, max pool, linear (per-channel), with
    per-tensor uint8 activations; one pair uses the ``.tensor`` overloads and one int8 pair the
    narrower range [-127, 127]."""
    import torch
    import torch.ao.quantization.fx._decomposed  # noqa: F401
    from torch import nn

    qd = torch.ops.quantized_decomposed

    def int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = w.abs().flatten(1).amax(1) / 127
        return torch.round(w / scale.reshape(-1, *[1] * (w.dim() - 1))).to(torch.int8), scale

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            wc, sc = int8(torch.randn(6, 3, 3, 3, generator=g) * 0.3)
            wl, sl = int8(torch.randn(5, 6 * 3 * 3, generator=g) * 0.2)
            if nan_scale:
                sc[2] = float("nan")
            for name, value in {"wc": wc, "sc": sc, "wl": wl, "sl": sl,
                                "zc": torch.zeros(6, dtype=torch.int64),
                                "zl": torch.zeros(5, dtype=torch.int64),
                                "xs": torch.tensor(0.0213), "xz": torch.tensor(120)}.items():
                self.register_buffer(name, value)
            self.bc = nn.Parameter(torch.randn(6, generator=g) * 0.1)
            self.bl = nn.Parameter(torch.randn(5, generator=g) * 0.1)

        def forward(self, x):
            x = qd.quantize_per_tensor.tensor(x, self.xs, self.xz, 0, 255, torch.uint8)
            x = qd.dequantize_per_tensor.tensor(x, self.xs, self.xz, 0, 255, torch.uint8)
            w = qd.dequantize_per_channel.default(self.wc, self.sc, self.zc, 0, -127, 127,
                                                  torch.int8)
            y = torch.relu(nn.functional.conv2d(x, w, self.bc, padding=1))
            y = qd.quantize_per_tensor.default(y, 0.0157, 0, 0, 255, torch.uint8)
            y = qd.dequantize_per_tensor.default(y, 0.0157, 0, 0, 255, torch.uint8)
            y = torch.flatten(nn.functional.max_pool2d(y, 2), 1)
            y = qd.quantize_per_tensor.default(y, 0.0157, 0, 0, 255, torch.uint8)
            y = qd.dequantize_per_tensor.default(y, 0.0157, 0, 0, 255, torch.uint8)
            w = qd.dequantize_per_channel.default(self.wl, self.sl, self.zl, 0, -127, 127,
                                                  torch.int8)
            y = nn.functional.linear(y, w, self.bl)
            y = qd.quantize_per_tensor.default(y, OUT_SCALE, 0, -127, 127, torch.int8)
            return qd.dequantize_per_tensor.default(y, OUT_SCALE, 0, -127, 127, torch.int8)

    return Net().eval()


def test_compiles_to_integer_ops_and_matches_torch():
    import torch
    import tvm
    from tvm import relax

    import squeezer
    from squeezer.frontend import import_model
    from squeezer.passes.graph.fold_qdq import fold_qdq

    net = qdq_net()
    x = torch.randn(1, 3, 6, 6)
    mod = squeezer.compile(net, (x,), threads=1)  # verified against torch eager
    assert mod.manifest["float_fallback"] == []
    assert mod.manifest["verified"]["output"]["max_abs"] <= OUT_SCALE * 1.001
    rng = np.random.default_rng(0)
    exact = total = 0
    for _ in range(10):
        xi = rng.standard_normal((1, 3, 6, 6)).astype(np.float32) * 2
        got = mod(xi)
        with torch.no_grad():
            want = net(torch.from_numpy(xi)).numpy()
        steps = np.abs(got - want) / OUT_SCALE
        assert steps.max() <= 1.001 and np.abs(got).max() <= 127 * OUT_SCALE * 1.001
        exact, total = exact + int((steps < 1e-3).sum()), total + steps.size
    assert exact >= 0.98 * total

    graph = relax.transform.FoldConstant()(fold_qdq()(import_model(net, (x,)).mod))
    calls = []
    relax.analysis.post_order_visit(graph["main"].body, lambda e: calls.append(e) if isinstance(
        e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    products = [e for e in calls if e.op.name in ("relax.nn.conv2d", "relax.matmul")]
    assert [(e.op.name, e.attrs.out_dtype) for e in products] == [
        ("relax.nn.conv2d", "int32"), ("relax.matmul", "int32")]
    assert [str(a.ty.dtype) for e in products for a in e.args] == ["uint8", "int8"] * 2


def test_bad_scales_are_named():
    import torch
    import torch.ao.quantization.fx._decomposed  # noqa: F401
    from torch import nn

    import squeezer
    from squeezer.errors import ModelLoadError, SqueezerError

    class ZeroScale(nn.Module):
        def forward(self, x):
            q = torch.ops.quantized_decomposed.quantize_per_tensor.default(
                x, 0.0, 0, 0, 255, torch.uint8)
            return torch.ops.quantized_decomposed.dequantize_per_tensor.default(
                q, 0.0, 0, 0, 255, torch.uint8)

    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ModelLoadError, match=r"node quantize_per_tensor \(quantize_per_tensor"
                                             r"\.default\): quantization scale must be finite"):
        squeezer.compile(ZeroScale(), (x,), verify=False)
    with pytest.raises(SqueezerError, match=r"\(dequantize\): dequantize scale must be finite "
                                            r"and > 0, got nan"):
        squeezer.compile(qdq_net(nan_scale=True), (x,), verify=False)


def test_a_quantized_pt2_file_compiles_in_a_fresh_process(tmp_path):
    """``torch.export.load`` needs the QDQ ops registered: a new process (the CLI) must do it
    before loading, or the file reads as corrupt."""
    import subprocess
    import sys

    import torch

    path = tmp_path / "q.pt2"
    torch.export.save(torch.export.export(qdq_net(), (torch.randn(1, 3, 6, 6),)), str(path))
    out = tmp_path / "q.sqz"
    cmd = [sys.executable, "-m", "squeezer.cli", "compile", str(path), "-o", str(out),
           "--threads", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.stat().st_size > 0
