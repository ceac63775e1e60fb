"""Tiny models quantized to QDQ for the fold_qdq tests: onnxruntime's quantize_static (ONNX) and
hand-written torch ``quantized_decomposed`` graphs (what squeezer's quantizer produces)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def export_onnx(model, shape: tuple[int, ...], path: Path) -> Path:
    import torch

    torch.onnx.export(model.eval(), (torch.zeros(shape),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["out"])
    return path


def quantize_onnx(float_path: Path, out_path: Path, calibration: np.ndarray,
                  per_channel: bool) -> Path:
    """``quantize_static`` in QDQ format: uint8 activations, int8 weights (as its docs advise)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(float_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out_path


def run_ort(path: Path, x: np.ndarray | list[np.ndarray], optimize: bool = True):
    """onnxruntime's output for one input, or a list of outputs for a list of inputs (one
    session); ``optimize=False`` runs the QDQ graph as written (float operators between
    DequantizeLinear and QuantizeLinear) instead of its fused integer kernels."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    if isinstance(x, list):
        return [sess.run(None, {"input": xi})[0] for xi in x]
    return sess.run(None, {"input": x})[0]


def output_step(path: Path) -> float:
    """The scale of the DequantizeLinear that produces the model's output."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = model.graph.output[0].name
    node = next(n for n in model.graph.node if out in n.output)
    assert node.op_type == "DequantizeLinear", node.op_type
    return float(inits[node.input[1]])
