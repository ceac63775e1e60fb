"""ONNX export of a squashed quantized model in the QDQ format of onnxruntime's quantizer.

``torch.onnx``'s exporter (the ``torch.export`` based one) translates
``quantized_decomposed.quantize_per_tensor``/``dequantize_per_tensor`` into
``QuantizeLinear``/``DequantizeLinear`` with scalar scale and uint8 zero point, and
``dequantize_per_channel`` into ``DequantizeLinear`` with ``axis=0`` over an int8 (weights) or
int32 (biases) initializer: the structure ``onnxruntime.quantization.quantize_static`` writes
with ``QuantFormat.QDQ``, per-channel weights and uint8 activations.

Values-only weights (int4) are exported as float initializers. onnxruntime's
``WeightBiasQuantization`` graph pass (basic level and above) re-quantizes a float weight whose
layer has a ``DequantizeLinear`` input to int8 with its own scales, which changes the int4 values;
run such models with ``disabled_optimizers=["WeightBiasQuantization"]`` to get their numerics.
"""

from __future__ import annotations

import collections
import logging
import warnings
from pathlib import Path

import torch

from . import base  # noqa: F401  (registers torch.ops.quantized_decomposed)

__all__ = ["export_onnx_qdq", "qdq_node_counts"]

_QD = torch.ops.quantized_decomposed
_QDQ_TARGETS = {
    _QD.quantize_per_tensor.default,
    _QD.dequantize_per_tensor.default,
    _QD.dequantize_per_channel.default,
}


def export_onnx_qdq(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    dynamic_batch: bool = True,
    opset: int = 18,
) -> Path:
    """Write the squashed quantized ``model`` as an ONNX QDQ model.

    Parameters
    ----------
    model : torch.nn.Module
        A model after ``squash`` of ``int8`` or ``int4`` (it calls the QDQ ops).
    example : torch.Tensor
        An input (its shape, and a batch dimension made dynamic with ``dynamic_batch``).
    path : str or Path
        The ``.onnx`` file to write (weights inside the file).
    opset : int
        ONNX opset (per-axis ``DequantizeLinear`` needs 13 or later).

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If the model has no quantize/dequantize operators (not squashed, or not quantized).
    """
    path = Path(path)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    was_training = model.training
    model.eval()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        exported = torch.export.export(model, (example,), dynamic_shapes=shapes)
        ops = {n.target for n in exported.graph.nodes if n.op == "call_function"}
        if not ops & _QDQ_TARGETS:
            raise ValueError(
                "the model has no quantize/dequantize operators (QuantizeLinear/DequantizeLinear "
                "in ONNX): squash a quantization method first"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                exported, dynamo=True, opset_version=opset, input_names=["input"],
                output_names=["output"], verbose=False,
            )  # fmt: skip
    finally:
        quiet.setLevel(level)
        model.train(was_training)
    assert program is not None
    program.save(str(path), external_data=False)
    return path


def qdq_node_counts(model: object) -> collections.Counter[str]:
    """Operator counts of an ONNX ``ModelProto`` (or path), to check the QDQ structure."""
    import onnx

    proto = onnx.load(str(model)) if isinstance(model, str | Path) else model
    assert isinstance(proto, onnx.ModelProto)
    return collections.Counter(n.op_type for n in proto.graph.node)
