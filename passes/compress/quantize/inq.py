"""Incremental Network Quantization: Zhou, Yao, Guo, Xu and Chen (2017), "Incremental Network
Quantization: Towards Lossless CNNs with Low-Precision Weights", ICLR, arXiv:1702.03044.

Weights become zero or signed powers of two, ``P = {+-2^n1, ..., +-2^n2, 0}`` per layer with
``n1 = floor(log2(4 s / 3))`` from ``s = max|W|`` of the trained layer and
``n2 = n1 + 1 - 2^(b-1) / 2`` for ``b`` bits (eq. 2-3): one bit for zero, ``b - 1`` for the
``2^(b-1)`` signed powers. A weight goes to ``beta sgn(W)`` for neighbours ``alpha < beta`` of
``P``'s magnitudes when ``(alpha + beta) / 2 <= |W| < 3 beta / 2``, to 0 below ``2^n2 / 2`` (eq. 4).

The weights are quantized incrementally (section 2.2): each round quantizes the largest-magnitude
weights not yet quantized until the accumulated ``portions`` (50%, 75%, 87.5%, 100% in the
paper) of every layer is done; quantized weights are frozen (their gradient is masked: the layer
reads the stored powers of two) and the others are retrained to make up for the error. The
rounds are spread evenly over the QAT phase, the last one at its end; rounds left when
``squash`` comes (no training) are applied then. The frozen mask and the powers of two are
buffers, saved and loaded with ``state_dict()``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field, field_validator

from ..base import CompressContext, register_method
from ..prune.layers import Layer
from ..prune.masks import dense_of
from .lowbit_base import WeightQuantizer
from .lowbit_method import LowbitMethod, LowbitSettings

__all__ = ["IncrementalQuantization", "InqSettings", "PowerOfTwoWeight", "exponent_range", "pow2"]

BITS = range(2, 6)


def exponent_range(max_abs: float, bits: int) -> tuple[int, int]:
    """``(n1, n2)``: the largest and smallest exponent of ``bits``-bit INQ for ``max|W|``."""
    if bits not in BITS:
        raise ValueError(f"bits must be in 2..5, got {bits}")
    n1 = math.floor(math.log2(4 * max_abs / 3)) if max_abs > 0 else 0
    return n1, n1 + 1 - 2 ** (bits - 1) // 2


def pow2(w: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """Each weight of ``w`` rounded to the nearest of ``{0, +-2^n2, ..., +-2^n1}`` (eq. 4)."""
    exps = torch.arange(n2, n1 + 1, dtype=torch.float64)
    levels = torch.cat([torch.zeros(1, dtype=torch.float64), torch.exp2(exps)])
    # (alpha + beta) / 2 between neighbours: 2^n2 / 2, then 0.75 * 2^n; exact in binary.
    bounds = torch.cat([levels[1:2] / 2, 0.75 * levels[2:]]).to(w.dtype)
    index = torch.bucketize(w.detach().abs(), bounds, right=True)
    return (levels.to(w.dtype)[index] * torch.where(w >= 0, 1.0, -1.0).to(w.dtype)).detach()


class PowerOfTwoWeight(WeightQuantizer):
    """The parametrization ``weight = where(frozen, values, W)``: frozen weights read their power
    of two (no gradient reaches the latent ``W`` there), the others stay float.

    Buffers ``frozen`` (bool), ``values`` and ``n1`` (the largest exponent) are in the
    ``state_dict``.
    """

    frozen: torch.Tensor
    values: torch.Tensor
    n1: torch.Tensor

    def __init__(self, weight: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.bits = bits
        n1, _ = exponent_range(float(weight.detach().abs().max()), bits)
        self.register_buffer("frozen", torch.zeros(weight.shape, dtype=torch.bool))
        self.register_buffer("values", torch.zeros_like(weight.detach()))
        self.register_buffer("n1", torch.tensor(n1, dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, n1={int(self.n1)}"

    @property
    def exponents(self) -> tuple[int, int]:
        """``(n1, n2)`` of this layer."""
        n1 = int(self.n1)
        return n1, n1 + 1 - 2 ** (self.bits - 1) // 2

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return torch.where(self.frozen, self.values, pow2(w, *self.exponents))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.where(self.frozen, self.values, w)

    def freeze(self, latent: torch.Tensor, portion: float) -> None:
        """Quantize and freeze the largest unfrozen ``latent`` weights until ``portion`` is."""
        with torch.no_grad():
            new = round(portion * latent.numel()) - int(self.frozen.sum())
            if new <= 0:
                return
            score = torch.where(self.frozen, -torch.inf, latent.abs()).reshape(-1)
            chosen = torch.sort(score, descending=True, stable=True).indices[:new]
            q = pow2(latent, *self.exponents).reshape(-1)
            self.values.view(-1)[chosen] = q[chosen]
            self.frozen.view(-1)[chosen] = True
            latent.view(-1)[chosen] = q[chosen]


class InqSettings(LowbitSettings):
    """Settings of ``inq``.

    Attributes
    ----------
    bits : int
        2 to 5, the paper's range (5 in its main results; 2 is ternary): zero and ``2^(bits-1)``
        signed powers of two; the compiler's 5-bit code holds up to 15 exponents. Per tensor
        with ``tensors: {fqn: {bits: ...}}``.
    portions : list of float
        Accumulated fractions of each layer quantized by the successive rounds: increasing,
        in (0, 1], ending at 1.
    layers, exclude, epochs, lr, ...
        As in ``LowbitSettings``; ``epochs`` are shared evenly by the retraining rounds.
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("bits",)

    bits: int = 5
    portions: list[float] = Field(default_factory=lambda: [0.5, 0.75, 0.875, 1.0])

    @field_validator("bits")
    @classmethod
    def _bits(cls, value: int) -> int:
        if value not in BITS:
            raise ValueError(
                f"INQ supports 2 to 5 bits (zero and 2^(bits-1) signed powers of two), got {value}"
            )
        return value

    @field_validator("portions")
    @classmethod
    def _portions(cls, value: list[float]) -> list[float]:
        if not value or value[-1] != 1.0:
            raise ValueError(f"must end with 1.0 (every weight quantized), got {value}")
        pairs = zip(value[:-1], value[1:], strict=True)
        if any(not 0 < p <= 1 for p in value) or any(a >= b for a, b in pairs):
            raise ValueError(f"must increase strictly within (0, 1], got {value}")
        return value


@register_method("inq")
class IncrementalQuantization(LowbitMethod[InqSettings]):
    """Powers-of-two weights quantized in rounds by magnitude, the rest retrained between."""

    Settings = InqSettings

    def __init__(self, settings: InqSettings) -> None:
        super().__init__(settings)
        self.rounds_done = 0

    def weight_quantizer(
        self, name: str, layer: Layer, settings: InqSettings
    ) -> PowerOfTwoWeight:
        return PowerOfTwoWeight(layer.weight, settings.bits)

    def stored_planes(self, name: str) -> tuple[int, int]:
        # The compiler's format for the values: {0, +-2^n1} is ternary; {0, +-b, +-2b} the
        # residual b + b/2 s_2 + b/2 s_3 (3 planes); more exponents its 5-bit code.
        bits = self.settings.for_tensor(name).bits
        return {2: (2, 2), 3: (3, 3)}.get(bits, (5, 0))

    def frozen_fraction(self) -> dict[str, float]:
        """The fraction of each layer's weights quantized and frozen so far."""
        out = {}
        for name, q in self.quantizers.items():
            assert isinstance(q, PowerOfTwoWeight)
            out[name] = int(q.frozen.sum()) / q.frozen.numel()
        return out

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        model = super().prepare(model, ctx)
        for name, q in self.quantizers.items():
            assert isinstance(q, PowerOfTwoWeight)
            n1, n2 = q.exponents
            ctx.log(f"{name}: {q.bits} bits, exponents {n2}..{n1}")
        self._advance(1)
        return model

    def step(self, model: torch.nn.Module, epoch: int, epochs: int) -> None:
        rounds = len(self.settings.portions)
        due = sum(1 for r in range(rounds) if round(r * epochs / max(rounds - 1, 1)) <= epoch + 1)
        self._advance(due, f"after epoch {epoch + 1}")

    def squash(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.rounds_done < len(self.settings.portions):
            self._advance(len(self.settings.portions), "at squash, without retraining")
        return super().squash(model)

    def _advance(self, rounds: int, when: str = "at start") -> None:
        if rounds <= self.rounds_done:
            return
        portion = self.settings.portions[rounds - 1]
        for name, layer in self.layers.items():
            q = self.quantizers[name]
            assert isinstance(q, PowerOfTwoWeight)
            q.freeze(dense_of(layer.owner, layer.attr), portion)
        self.rounds_done = rounds
        if self.ctx is not None:
            self.ctx.log(f"round {rounds} {when}: {portion:.2%} of every layer quantized")
