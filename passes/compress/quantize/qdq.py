"""The squashed form of a quantized layer: QDQ ops of ``torch.ops.quantized_decomposed``.

A quantized ``Linear`` or ``Conv2d`` computes (the contract in this package's ``__init__``)::

    x = dequantize_per_tensor(quantize_per_tensor(x, s_x, zp_x, 0, 255, uint8), ...)   # input
    w = dequantize_per_channel(weight, weight_scale, weight_zero_point, 0, -127, 127, int8)
    b = dequantize_per_channel(bias, bias_scale, bias_zero_point, 0, INT32_MIN, INT32_MAX, int32)
    y = linear(x, w, b) / conv2d(x, w, b, ...)
    y = dequantize_per_tensor(quantize_per_tensor(y, s_y, zp_y, ...))                    # optional

The int32 bias with scale ``s_x * weight_scale`` is what ``onnxruntime.quantization`` writes;
values-only weights (int4) stay a float ``weight`` holding ``q * scale`` and a float bias.

``QuantizedLayer`` replaces an eager module; ``rewrite_node`` does the same to a node of an
exported graph (``torch.export`` → ``.module()``), keeping the tensor names: ``<layer>.weight``
is the int8 tensor in both, next to ``weight_scale`` and ``weight_zero_point``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .base import UINT8

__all__ = [
    "LayerPlan",
    "QuantizedLayer",
    "conv_args",
    "qdq_activation",
    "quantize_bias",
    "rewrite_node",
]

qd = torch.ops.quantized_decomposed
INT32 = (-(2**31), 2**31 - 1)


@dataclass
class LayerPlan:
    """What a layer becomes: tensors to store and activation quantization parameters.

    Attributes
    ----------
    kind : str
        ``Linear`` or ``Conv2d``.
    weight : torch.Tensor
        int8 (dequantized by ``weight_scale``) or float (values-only).
    weight_scale : torch.Tensor or None
        One scale per output channel (equal ones for per-tensor quantization); None for a
        float weight.
    bias : torch.Tensor or None
        int32 (dequantized by ``bias_scale``) with an int8 weight, else float.
    input_qparams, output_qparams : (float, int) or None
        uint8 scale and zero point of the input and output QDQ.
    bias_scale : torch.Tensor or None
        ``weight_scale * input scale`` for an int32 bias.
    conv : dict
        ``F.conv2d`` keyword arguments of a convolution.
    """

    kind: str
    weight: torch.Tensor
    weight_scale: torch.Tensor | None
    bias: torch.Tensor | None
    input_qparams: tuple[float, int] | None
    output_qparams: tuple[float, int] | None = None
    bias_scale: torch.Tensor | None = None
    conv: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store on the layer, by attribute name."""
        out = {"weight": self.weight}
        if self.weight_scale is not None:
            out["weight_scale"] = self.weight_scale
            out["weight_zero_point"] = torch.zeros_like(self.weight_scale, dtype=torch.int64)
        if self.bias is not None:
            out["bias"] = self.bias
            if self.bias.dtype == torch.int32:
                assert self.bias_scale is not None
                out["bias_scale"] = self.bias_scale
                out["bias_zero_point"] = torch.zeros(self.bias.shape, dtype=torch.int64)
        return out


def qdq_activation(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """uint8 quantize + dequantize of an activation (per tensor)."""
    q = qd.quantize_per_tensor.default(x, scale, zero_point, *UINT8, torch.uint8)
    return qd.dequantize_per_tensor.default(q, scale, zero_point, *UINT8, torch.uint8)


def dequantize_weight(
    w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> torch.Tensor:
    """The float weight of an int8 weight with one scale per output channel (axis 0)."""
    return qd.dequantize_per_channel.default(w, scale, zero_point, 0, -127, 127, torch.int8)


def dequantize_bias(b: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """The float bias of an int32 bias (scale ``input scale * weight scale`` per channel)."""
    return qd.dequantize_per_channel.default(b, scale, zero_point, 0, *INT32, torch.int32)


class QuantizedLayer(torch.nn.Module):
    """A ``Linear`` or ``Conv2d`` in squashed QDQ form (see the module docstring).

    Parameters
    ----------
    plan : LayerPlan
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor | None
    bias_scale: torch.Tensor
    bias_zero_point: torch.Tensor

    def __init__(self, plan: LayerPlan) -> None:
        super().__init__()
        self.kind = plan.kind
        self.conv = dict(plan.conv)
        self.input_qparams = plan.input_qparams
        self.output_qparams = plan.output_qparams
        for name, t in plan.tensors().items():
            _store(self, name, t)
        if plan.bias is None:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_qparams is not None:
            x = qdq_activation(x, *self.input_qparams)
        w = self.weight
        if w.dtype == torch.int8:
            w = dequantize_weight(w, self.weight_scale, self.weight_zero_point)
        b = self.bias
        if b is not None and b.dtype == torch.int32:
            b = dequantize_bias(b, self.bias_scale, self.bias_zero_point)
        if self.kind == "Linear":
            y = F.linear(x, w, b)
        else:
            y = F.conv2d(x, w, b, **self.conv)
        if self.output_qparams is not None:
            y = qdq_activation(y, *self.output_qparams)
        return y

    def extra_repr(self) -> str:
        w = self.weight
        fmt = "int8" if w.dtype == torch.int8 else "float values"
        return (
            f"{self.kind} {tuple(w.shape)}, weight {fmt}, input {self.input_qparams}, "
            f"output {self.output_qparams}"
        )


def quantize_bias(
    bias: torch.Tensor, weight_scale: torch.Tensor, input_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 bias and its per-channel scale ``weight_scale * input_scale`` (as onnxruntime)."""
    scale = (weight_scale * input_scale).to(torch.float32).expand(bias.shape).contiguous()
    q = torch.clamp(torch.round(bias.to(torch.float32) / scale), *INT32).to(torch.int32)
    return q, scale


def _store(module: torch.nn.Module, name: str, t: torch.Tensor) -> None:
    # Weights and biases stay parameters (frozen; int8/int32 ones too) so that parameter counts
    # and names survive squash; scales and zero points are buffers.
    if name in ("weight", "bias"):
        setattr(module, name, torch.nn.Parameter(t.detach().clone(), requires_grad=False))
    else:
        module.register_buffer(name, t.detach().clone())


def conv_args(module: torch.nn.Conv2d) -> dict[str, Any]:
    """The ``F.conv2d`` keyword arguments of a ``Conv2d`` module (zero padding only)."""
    return {
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "groups": module.groups,
    }


def rewrite_node(
    model: torch.fx.GraphModule,
    node: torch.fx.Node,
    owner: torch.nn.Module,
    prefix: str,
    plan: LayerPlan,
    input_node: torch.fx.Node,
) -> None:
    """Put ``plan`` into a graph: store its tensors on ``owner`` and insert the QDQ nodes.

    ``node`` is the ``aten.linear``/``aten.conv2d`` call, ``owner`` the module holding its weight
    (and bias) under the attribute names of ``plan.tensors()``, ``prefix`` that module's path,
    ``input_node`` the activation feeding ``node`` (the caller removed any fake quantizer).
    """
    graph = model.graph
    for name, t in plan.tensors().items():
        if hasattr(owner, name):
            delattr(owner, name)
        _store(owner, name, t)

    def attr(name: str) -> torch.fx.Node:
        return graph.get_attr(f"{prefix}.{name}" if prefix else name)

    old = [a for a in node.args[1:3] if isinstance(a, torch.fx.Node)]
    with graph.inserting_before(node):
        x = input_node
        if plan.input_qparams is not None:
            x = _insert_qdq(graph, input_node, plan.input_qparams)
        w = attr("weight")
        if plan.weight.dtype == torch.int8:
            args = (w, attr("weight_scale"), attr("weight_zero_point"), 0, -127, 127, torch.int8)
            w = graph.call_function(qd.dequantize_per_channel.default, args)
        b: torch.fx.Node | None = None
        if plan.bias is not None:
            b = attr("bias")
            if plan.bias.dtype == torch.int32:
                args = (b, attr("bias_scale"), attr("bias_zero_point"), 0, *INT32, torch.int32)
                b = graph.call_function(qd.dequantize_per_channel.default, args)
    node.args = (x, w, b, *node.args[3:])
    if plan.output_qparams is not None:
        users = list(node.users)
        with graph.inserting_after(node):
            q = graph.call_function(qd.quantize_per_tensor.default,
                                    (node, *plan.output_qparams, *UINT8, torch.uint8))
        with graph.inserting_after(q):
            y = graph.call_function(qd.dequantize_per_tensor.default,
                                    (q, *plan.output_qparams, *UINT8, torch.uint8))
        for user in users:
            user.replace_input_with(node, y)
    for n in old:
        if not n.users:
            graph.erase_node(n)
    model.recompile()


def _insert_qdq(
    graph: torch.fx.Graph, x: torch.fx.Node, qparams: tuple[float, int]
) -> torch.fx.Node:
    q = graph.call_function(qd.quantize_per_tensor.default, (x, *qparams, *UINT8, torch.uint8))
    return graph.call_function(qd.dequantize_per_tensor.default, (q, *qparams, *UINT8, torch.uint8))
