"""Shared quantization math: integer ranges, quantization parameters, (fake) quantization with the
straight-through estimator, finiteness checks, and the activation quantizer module.

Rounding follows ``torch.ops.quantized_decomposed`` exactly (``round(x * (1 / scale)) + zp``,
round half to even, then clamp), so a fake-quantized model in eval mode computes the same values
as the squashed model that calls those ops.

The straight-through estimator (Bengio et al. 2013) passes the gradient of ``round`` unchanged;
``fake_quant`` clamps after rounding, so inputs outside the range get no gradient (clipped STE).
A ``scale`` that requires grad receives the LSQ gradient (Esser et al. 2020): ``round(v) - v``
inside the range, ``qmin - zp`` or ``qmax - zp`` outside it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

from squeezer.errors import InputError

from .observers import Observer

__all__ = [
    "ActQuant",
    "SUPPORTED_BITS",
    "UINT8",
    "WeightQuant",
    "affine_qparams",
    "check_finite",
    "dequantize",
    "fake_quant",
    "quant_range",
    "quantize",
    "round_ste",
    "symmetric_scale",
]

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)
UINT8 = (0, 255)
# Below this a scale would overflow 1/scale in float32 (and means an all-zero tensor anyway).
_MIN_SCALE = 1e-12


def quant_range(bits: int, signed: bool, narrow: bool = True) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-wide integer.

    ``narrow`` drops the most negative signed value so the range is symmetric ([-127, 127] for
    int8, the range of symmetric weight quantization); unsigned ranges are ``[0, 2**bits - 1]``.

    Raises
    ------
    ValueError
        If ``bits`` is not one of ``SUPPORTED_BITS``.
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {bits}")
    if not signed:
        return 0, 2**bits - 1
    half = 2 ** (bits - 1)
    return (-half + 1 if narrow else -half), half - 1


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise ``InputError`` naming ``what`` and the first bad index if ``t`` has NaN or inf."""
    bad = ~torch.isfinite(t.detach())
    if bool(bad.any()):
        index = tuple(int(i) for i in torch.nonzero(bad)[0])
        value = float(t.detach()[index])
        raise InputError(f"{what} has {value} at index {index}: quantization needs finite values")


def affine_qparams(lo: float, hi: float, qmin: int, qmax: int) -> tuple[float, int]:
    """Scale and integer zero point mapping ``[lo, hi]`` (widened to hold 0) onto ``[qmin, qmax]``.

    Zero is exactly representable (zero padding and ReLU outputs stay exact). Values in the range
    round-trip within ``scale / 2``. An all-zero range gets scale 1.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"invalid range [{lo}, {hi}]")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(torch.tensor((hi - lo) / (qmax - qmin), dtype=torch.float32))
    if scale < _MIN_SCALE:
        return 1.0, int(qmin if lo == 0 else qmin + (qmax - qmin + 1) // 2)
    zero_point = int(min(max(qmin - round(lo / scale), qmin), qmax))
    return scale, zero_point


def symmetric_scale(absmax: torch.Tensor, qmax: int) -> torch.Tensor:
    """Scales ``absmax / qmax`` (float32); all-zero channels get 1 so that they quantize to 0."""
    scale = absmax.detach().to(torch.float32) / qmax
    return torch.where(scale < _MIN_SCALE, torch.ones_like(scale), scale)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    qmin: int,
    qmax: int,
) -> torch.Tensor:
    """``clamp(round(x / scale) + zero_point, qmin, qmax)`` as float, rounding like torch's ops."""
    return torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, qmin, qmax)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor | float, zero_point: torch.Tensor | int
) -> torch.Tensor:
    """``(q - zero_point) * scale`` in float32."""
    return (q.to(torch.float32) - zero_point) * scale


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """``round(v)`` with the identity as its gradient (straight-through estimator)."""
    # round(v) + 0 is exactly round(v); v + (round(v) - v) need not be in floating point.
    return torch.round(v).detach() + (v - v.detach())


def fake_quant(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    qmin: int,
    qmax: int,
) -> torch.Tensor:
    """Quantize and dequantize ``x``; gradients by the clipped STE (and LSQ for ``scale``)."""
    inv = 1.0 / scale
    v = round_ste(x * inv) + zero_point
    return (torch.clamp(v, qmin, qmax) - zero_point) * scale


class WeightQuant(torch.nn.Module):
    """A parametrization making a layer compute with its quantized weight (``values``).

    The forward value is exactly ``values(w)``; the gradient reaches ``w`` unchanged (STE), so
    the float weight keeps training. Subclasses define ``values`` and ``stored_bytes``.
    """

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.values(w.detach()) + (w - w.detach())

    def values(self, w: torch.Tensor) -> torch.Tensor:
        """The float tensor of quantized values the layer computes with."""
        raise NotImplementedError

    def stored_bytes(self, w: torch.Tensor) -> int:
        """Bytes of ``w`` stored in this format (codes and scales)."""
        raise NotImplementedError


class ActQuant(torch.nn.Module):
    """Per-tensor asymmetric uint8 quantization of one activation, with its calibrator.

    Modes: ``observe`` (identity; the observer records the values), ``quant`` (fake quantization
    with the calibrated range), ``off`` (identity). ``freeze`` turns the observer's range into
    a scale and zero point. With ``ranges="learned"`` the scale is a parameter (``log_scale``,
    so that Adam's steps are relative changes) trained with the LSQ gradient; the zero point stays
    where calibration put it. With ``"frozen"`` neither changes after calibration.

    Parameters
    ----------
    observer : Observer
        The calibrator (``squeezer.passes.compress.quantize.observers``).
    where : str
        What this activation is, for messages (``input of layer 'fc1'``).
    ranges : {"learned", "frozen"}
    """

    zero_point: torch.Tensor

    def __init__(
        self, observer: Observer, where: str, ranges: Literal["learned", "frozen"] = "frozen"
    ) -> None:
        super().__init__()
        self.observer = observer
        self.where = where
        self.mode: Literal["observe", "quant", "off"] = "observe"
        self.log_scale = torch.nn.Parameter(torch.zeros(()), requires_grad=ranges == "learned")
        self.register_buffer("zero_point", torch.zeros(()))
        self.qmin, self.qmax = UINT8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            check_finite(x, self.where)
            self.observer.observe(x.detach())
            return x
        if self.mode == "off":
            return x
        return fake_quant(x, self.log_scale.exp(), self.zero_point, self.qmin, self.qmax)

    def freeze(self) -> None:
        """Set scale and zero point from the observer's range and switch to ``quant``."""
        if not self.observer.seen:
            raise InputError(f"{self.where}: no calibration data reached it")
        lo, hi = self.observer.range()
        scale, zero_point = affine_qparams(lo, hi, self.qmin, self.qmax)
        with torch.no_grad():
            self.log_scale.fill_(math.log(scale))
            self.zero_point.fill_(zero_point)
        self.mode = "quant"

    def qparams(self) -> tuple[float, int]:
        """The scale (a float32 value as a Python float) and zero point in use."""
        scale = self.log_scale.detach().exp().to(torch.float32)
        return float(scale), int(self.zero_point)

    def extra_repr(self) -> str:
        return f"{self.where}, mode={self.mode}"
