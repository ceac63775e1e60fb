"""int4 weights with per-group scales and uint8 activations.

Every output row of a weight (``(out, in)`` for ``Linear``, ``(out, in * kh * kw)`` in PyTorch's
``(in, kh, kw)`` order for ``Conv2d``) is cut into groups of ``group_size`` consecutive inputs
(the last group is shorter when ``group_size`` does not divide the row). Each group has one
symmetric scale ``absmax / 7``, so its codes lie in [-7, 7] inside int4's [-8, 7] and the group's
largest magnitude is exactly ``±7 * scale``: the scale can be read back from the values, which
is how the compiler recognizes the format. Activations are quantized as by ``int8`` (uint8 per
tensor, calibrated, learned or frozen during QAT).

The squashed layer keeps a float weight holding exactly ``q * scale`` (the values-only format of
this package's contract) and a float bias, with uint8 QDQ on its input.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator

from ..base import register_method
from .base import WeightQuant, quantize, symmetric_scale
from .method import ActivationSettings, QuantMethod, Site, check_bits
from .qdq import LayerPlan

__all__ = ["Int4", "Int4Settings", "Int4Weight"]

QMIN, QMAX = -8, 7
# Symmetric scales use 7: -8 would make the group's scale unrecoverable from its values.
SCALE_QMAX = 7


class Int4Settings(ActivationSettings):
    """Settings of ``int4`` (see ``ActivationSettings`` for calibration and QAT fields).

    Attributes
    ----------
    bits : int
        Fixed at 4 (``int8`` is its own method).
    group_size : {32, 64, 128}
        Consecutive inputs sharing one scale; per tensor.
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("group_size", "calibration", "percentile", "outputs")

    bits: int = 4
    group_size: Literal[32, 64, 128] = 32

    @field_validator("bits")
    @classmethod
    def _bits(cls, value: int) -> int:
        return check_bits(value, (4,), "int4", "; for 8-bit weights use the int8 method")


class Int4Weight(WeightQuant):
    """Symmetric int4 quantization with one scale per group of ``group_size`` inputs of a row."""

    def __init__(self, group_size: int = 32) -> None:
        super().__init__()
        self.group_size = group_size

    def _grouped(self, w: torch.Tensor) -> torch.Tensor:
        rows = w.reshape(w.shape[0], -1)
        pad = -rows.shape[1] % self.group_size
        return F.pad(rows, (0, pad)).reshape(w.shape[0], -1, self.group_size)

    def _ungrouped(self, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        cols = math.prod(w.shape[1:])
        return g.reshape(w.shape[0], -1)[:, :cols].reshape(w.shape)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """``absmax / 7`` of every group, shape ``(out, groups)``."""
        return symmetric_scale(self._grouped(w).abs().amax(dim=2), SCALE_QMAX)

    def encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The int4 codes (int8 tensor, weight-shaped) and the group scales."""
        scale = self.scale(w)
        q = quantize(self._grouped(w), scale[:, :, None], 0, QMIN, QMAX)
        return self._ungrouped(q, w).to(torch.int8), scale

    def values(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.scale(w)
        q = quantize(self._grouped(w), scale[:, :, None], 0, QMIN, QMAX)
        return self._ungrouped(q * scale[:, :, None], w)

    def stored_bytes(self, w: torch.Tensor) -> int:
        groups = self._grouped(w).shape[1]
        return math.ceil(w.numel() / 2) + 4 * w.shape[0] * groups


@register_method("int4")
class Int4(QuantMethod[Int4Settings]):
    """int4 weights per group with uint8 activations (see the module docstring)."""

    Settings = Int4Settings

    def weight_quant(self, site: Site, settings: Any) -> WeightQuant:
        return Int4Weight(settings.group_size)

    def plan(
        self, site: Site, settings: Any, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> LayerPlan:
        assert site.weight_quant is not None
        values = site.weight_quant.values(weight)
        return LayerPlan(
            site.kind, values, None, bias, self.qparams(site, "input"), self.qparams(site, "output")
        )
