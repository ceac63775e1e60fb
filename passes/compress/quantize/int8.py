"""int8 quantization: per-channel symmetric int8 weights, per-tensor asymmetric uint8 activations.

Post-training quantization (``epochs: 0``, the default) calibrates the input range of every
quantized ``Linear``/``Conv2d`` (``calibration``: ``minmax``, ``percentile`` or ``kl``, see
``observers``) on the training split. With ``epochs > 0`` the model then trains with fake
quantization and the straight-through estimator (QAT, Jacob et al. 2018): weight scales follow
the weights (``absmax / 127`` of each output channel at every step), activation scales are
learned with the LSQ gradient (``ranges: learned``) or kept as calibrated (``ranges: frozen``).

Weights use the narrow range [-127, 127] (symmetric: zero point 0, no -128), as
``torch.ao``'s symmetric per-channel weights and the compiler's VNNI kernels expect. Biases are
stored as int32 with scale ``input scale * weight scale``, as ``onnxruntime`` writes them.
Grouped and depthwise convolutions are quantized too.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import field_validator

from ..base import register_method
from .base import WeightQuant, quantize, symmetric_scale
from .method import ActivationSettings, QuantMethod, Site, check_bits
from .qdq import LayerPlan, quantize_bias

__all__ = ["Int8", "Int8Settings", "Int8Weight"]

QMIN, QMAX = -127, 127


class Int8Settings(ActivationSettings):
    """Settings of ``int8`` (see ``ActivationSettings`` for calibration and QAT fields).

    Attributes
    ----------
    bits : int
        Fixed at 8 (``int4`` is its own method).
    per_channel : bool
        One weight scale per output channel (else one per tensor, repeated per channel in the
        squashed model); per tensor.
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("calibration", "percentile", "per_channel", "outputs")

    bits: int = 8
    per_channel: bool = True

    @field_validator("bits")
    @classmethod
    def _bits(cls, value: int) -> int:
        return check_bits(value, (8,), "int8", "; for 4-bit weights use the int4 method")


class Int8Weight(WeightQuant):
    """Symmetric int8 weight quantization, per output channel or per tensor."""

    def __init__(self, per_channel: bool = True) -> None:
        super().__init__()
        self.per_channel = per_channel

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """``absmax / 127`` per output channel (shape ``(out,)``; equal values per tensor)."""
        absmax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        if not self.per_channel:
            absmax = absmax.amax().expand(w.shape[0])
        return symmetric_scale(absmax, QMAX).contiguous()

    def encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 codes of ``w`` and their per-channel scales."""
        scale = self.scale(w)
        q = quantize(w, _per_row(scale, w), 0, QMIN, QMAX)
        return q.to(torch.int8), scale

    def values(self, w: torch.Tensor) -> torch.Tensor:
        q, scale = self.encode(w)
        return q.to(torch.float32) * _per_row(scale, w)

    def stored_bytes(self, w: torch.Tensor) -> int:
        return w.numel() + 4 * (w.shape[0] if self.per_channel else 1)


def _per_row(scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (w.dim() - 1)))


@register_method("int8")
class Int8(QuantMethod[Int8Settings]):
    """int8 post-training quantization or QAT (see the module docstring)."""

    Settings = Int8Settings

    def weight_quant(self, site: Site, settings: Any) -> WeightQuant:
        return Int8Weight(settings.per_channel)

    def plan(
        self, site: Site, settings: Any, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> LayerPlan:
        assert isinstance(site.weight_quant, Int8Weight)
        q, scale = site.weight_quant.encode(weight)
        x_qparams = self.qparams(site, "input")
        assert x_qparams is not None
        bias_q = bias_scale = None
        if bias is not None:
            bias_q, bias_scale = quantize_bias(bias, scale, x_qparams[0])
        return LayerPlan(
            site.kind, q, scale, bias_q, x_qparams, self.qparams(site, "output"), bias_scale
        )
