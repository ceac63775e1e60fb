"""The dynamic tree 8-bit data type as a weight format: Dettmers (2016), "8-Bit Approximations
for Parallelism in Deep Learning", ICLR, arXiv:1511.04561.

A code byte is read from its most significant bit: a sign bit; then ``E`` zero bits, the
exponent (the value is scaled by ``10**-E``); then a one bit, the indicator that the exponent has
ended; the ``6 - E`` bits left are a linear fraction, the path through a binary bisection tree of
the interval [0.1, 1]: with ``n`` fraction bits ``f``, the value is the centre of the ``f``-th of
``2**n`` equal sub-intervals, ``0.1 + (f + 0.5) * 0.9 / 2**n``. So ``E = 0`` gives 64 values in
[0.1, 1], ``E = 1`` 32 in [0.01, 0.1], down to one value (0.55e-6) at ``E = 6``. A byte whose seven
magnitude bits are all zero has no indicator: it is zero, with either sign (as in the author's
``bitsandbytes.functional.create_dynamic_map``). The 256 codes hold 255 distinct values,
symmetric around 0 (``value(code | 0x80) == -value(code)``); the largest magnitude is
``0.1 + 63.5 * 0.9 / 64 = 0.99297``.

A weight tensor (``granularity: tensor``) or each output row (``row``) is divided by its largest
magnitude and every value is replaced by the nearest code; squash leaves the float weight holding
exactly ``code value * absmax`` (at most 255 distinct values per row, which the compiler stores
as a codebook with 8-bit indices). Activations stay in float.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

import torch
from pydantic import field_validator

from ..base import register_method
from .base import WeightQuant, symmetric_scale
from .method import QuantMethod, QuantSettings, Site, check_bits

__all__ = [
    "Dynamic8",
    "Dynamic8Settings",
    "DynamicTreeWeight",
    "code_values",
    "decode",
    "dynamic_tree_codebook",
]


def decode(code: int) -> float:
    """The value of one dynamic-tree code byte (0..255), exactly as the paper reads it."""
    if not 0 <= code <= 255:
        raise ValueError(f"a code is one byte (0..255), got {code}")
    sign = -1.0 if code & 0x80 else 1.0
    magnitude = code & 0x7F
    if magnitude == 0:
        return 0.0
    exponent = 7 - magnitude.bit_length()  # zero bits before the indicator bit
    bits = 6 - exponent  # fraction bits after it
    fraction = magnitude & ((1 << bits) - 1)
    leaf = 0.1 + (fraction + 0.5) * 0.9 / 2**bits
    return sign * 10.0**-exponent * leaf


@functools.cache
def dynamic_tree_codebook() -> torch.Tensor:
    """The value of every code 0..255 (float32, indexed by code)."""
    return torch.tensor([decode(c) for c in range(256)], dtype=torch.float64).to(torch.float32)


@functools.cache
def code_values() -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct code values, sorted, and for each the smallest code holding it."""
    book = dynamic_tree_codebook()
    values, inverse = torch.unique(book, sorted=True, return_inverse=True)
    codes = torch.full((len(values),), 256, dtype=torch.int64)
    codes.scatter_reduce_(0, inverse, torch.arange(256), reduce="amin")
    return values, codes.to(torch.uint8)


def nearest(x: torch.Tensor) -> torch.Tensor:
    """Index into ``code_values()[0]`` of the value nearest to each element of ``x``."""
    values, _ = code_values()
    midpoints = (values[1:] + values[:-1]) / 2
    return torch.bucketize(x.to(torch.float32), midpoints)


class Dynamic8Settings(QuantSettings):
    """Settings of ``dynamic8``.

    Attributes
    ----------
    bits : int
        Fixed at 8 (the data type is 8 bits wide).
    granularity : {"tensor", "row"}
        One absmax scale per tensor or per output row; per tensor.
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("granularity",)

    bits: int = 8
    granularity: Literal["tensor", "row"] = "tensor"

    @field_validator("bits")
    @classmethod
    def _bits(cls, value: int) -> int:
        return check_bits(value, (8,), "dynamic8", " (the dynamic tree type is one byte)")


class DynamicTreeWeight(WeightQuant):
    """Weights as dynamic-tree codes times an absmax scale per tensor or per row."""

    def __init__(self, granularity: Literal["tensor", "row"] = "tensor") -> None:
        super().__init__()
        self.granularity = granularity

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """The absmax of each row (``row``) or of the tensor (shape ``(1,)``)."""
        rows = w.reshape(w.shape[0], -1).abs()
        absmax = rows.amax(dim=1) if self.granularity == "row" else rows.amax().reshape(1)
        return symmetric_scale(absmax, 1)

    def _scale_view(self, w: torch.Tensor) -> torch.Tensor:
        return self.scale(w).reshape(-1, *([1] * (w.dim() - 1)))

    def encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The code bytes (uint8, weight-shaped) and the scales."""
        _, codes = code_values()
        return codes[nearest(w / self._scale_view(w))], self.scale(w)

    def values(self, w: torch.Tensor) -> torch.Tensor:
        values, _ = code_values()
        scale = self._scale_view(w)
        return values[nearest(w / scale)] * scale

    def stored_bytes(self, w: torch.Tensor) -> int:
        return w.numel() + 4 * self.scale(w).numel()


@register_method("dynamic8")
class Dynamic8(QuantMethod[Dynamic8Settings]):
    """Dynamic tree 8-bit weights (see the module docstring); QAT with ``epochs > 0``."""

    Settings = Dynamic8Settings
    activations = False

    def weight_quant(self, site: Site, settings: Any) -> WeightQuant:
        return DynamicTreeWeight(settings.granularity)

    def plan(
        self, site: Site, settings: Any, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        return None
