"""torch ``quantized_decomposed`` quantize/dequantize ops to ``relax.quantize``/``dequantize``.

squeezer's quantizer (and PT2E's ``convert_pt2e``) leave these ops in the exported graph: per
tensor activations ``quantize_per_tensor`` -> ``dequantize_per_tensor`` (scale and zero point
as Python numbers, or as 0-d tensors in the ``.tensor`` overloads), and int8 weights through
``dequantize_per_channel``. The converters below go to ``from_exported_program``'s
``custom_convert_map``; :func:`squeezer.passes.graph.fold_qdq` then turns the QDQ structure into
integer operators.

Semantics kept: torch clamps to ``[quant_min, quant_max]``; ``relax.quantize`` clamps to the
output dtype's range, so a narrower range becomes a ``clip`` after the quantize. Scales become
float32 and zero points int32 (what Relax accepts; torch stores them as float64/int64).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax

from squeezer.errors import ModelLoadError


def _dtype(torch_dtype) -> str:
    return str(torch_dtype).removeprefix("torch.")


def _dtype_range(dtype: str) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def _scale(value, node) -> relax.Expr:
    if isinstance(value, relax.Expr):
        return value if value.ty.dtype == "float32" else relax.op.astype(value, "float32")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ModelLoadError(f"node {node.name} ({node.target.__name__}): quantization scale "
                             f"must be finite and > 0, got {value}")
    return relax.const(value, "float32")


def _zero_point(value) -> relax.Expr:
    if value is None:
        return relax.const(0, "int32")
    if isinstance(value, relax.Expr):
        return value if value.ty.dtype == "int32" else relax.op.astype(value, "int32")
    return relax.const(int(value), "int32")


def _quantize(node, importer, per_channel: bool) -> relax.Var:
    bb = importer.block_builder
    args = importer.retrieve_args(node)
    if per_channel:
        x, scale, zp, axis, qmin, qmax, dtype = args[:7]
    else:
        x, scale, zp, qmin, qmax, dtype = args[:6]
        axis = -1
    dtype = _dtype(dtype)
    y = bb.emit(relax.op.quantize(x, _scale(scale, node), _zero_point(zp),
                                  axis=int(axis), out_dtype=dtype))
    if (int(qmin), int(qmax)) != _dtype_range(dtype):
        y = bb.emit(relax.op.clip(y, int(qmin), int(qmax)))
    return y


def _dequantize(node, importer, per_channel: bool) -> relax.Var:
    bb = importer.block_builder
    args = importer.retrieve_args(node)
    if per_channel:
        x, scale, zp, axis = args[:4]
    else:
        x, scale, zp = args[:3]
        axis = -1
    out_dtype = node.kwargs.get("out_dtype")
    if out_dtype is not None and _dtype(out_dtype) != "float32":
        raise ModelLoadError(f"node {node.name} ({node.target.__name__}): dequantize to "
                             f"{_dtype(out_dtype)} is not supported (float32 only)")
    return bb.emit(relax.op.dequantize(x, _scale(scale, node), _zero_point(zp),
                                       axis=int(axis), out_dtype="float32"))


def qdq_convert_map() -> dict[str, Callable]:
    """Converters for ``from_exported_program(custom_convert_map=...)``, keyed by op name.

    Importing ``torch.ao.quantization.fx._decomposed`` registers the ops with torch.
    """
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    table: dict[str, Callable] = {}
    for name in ("quantize_per_tensor", "dequantize_per_tensor"):
        fn = _quantize if name.startswith("quantize") else _dequantize
        for overload in ("default", "tensor"):
            table[f"{name}.{overload}"] = (
                lambda node, importer, fn=fn: fn(node, importer, per_channel=False))
    table["quantize_per_channel.default"] = (
        lambda node, importer: _quantize(node, importer, per_channel=True))
    table["dequantize_per_channel.default"] = (
        lambda node, importer: _dequantize(node, importer, per_channel=True))
    return table
