"""Ternary Weight Networks: Li, Zhang and Liu (2016), "Ternary Weight Networks",
arXiv:1605.04711.

Each weight tensor ``W`` is approximated by ``a * T`` with ``T`` in {-1, 0, +1} (eq. 2-6): the
threshold ``delta = 0.7 * E|W|`` (eq. 8, the paper's approximation of the optimal threshold for
normal or uniform weights; ``threshold`` sets the factor), ``T_i = sign(W_i)`` where
``|W_i| > delta`` and 0 elsewhere, and the scale ``a = mean |W_i|`` over ``|W_i| > delta`` (eq. 5,
one per layer). Training keeps the float weights: the forward pass uses the ternary ones and the
gradient passes straight through to the float weights (section 2.3). Activations stay float.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from ..base import register_method
from ..prune.layers import Layer
from .lowbit_base import WeightQuantizer
from .lowbit_method import LowbitMethod, LowbitSettings

__all__ = ["TernarySettings", "TernaryWeight", "TernaryWeightNetworks", "ternarize"]


def ternarize(w: torch.Tensor, factor: float = 0.7) -> tuple[torch.Tensor, float, float]:
    """TWN's ``(a * T, a, delta)`` of ``w`` with ``delta = factor * mean|w|`` (per tensor).

    ``a`` is 0 when no weight exceeds ``delta`` (an all-zero tensor).
    """
    magnitude = w.detach().abs()
    delta = factor * float(magnitude.mean())
    kept = magnitude > delta
    count = int(kept.sum())
    a = float(magnitude[kept].sum()) / count if count else 0.0
    scale = torch.tensor(a, dtype=w.dtype)
    q = torch.where(kept, torch.where(w >= 0, scale, -scale), torch.zeros((), dtype=w.dtype))
    return q, float(scale), delta


class TernaryWeight(WeightQuantizer):
    """The parametrization ``weight = a * T`` (TWN) with the identity straight-through gradient."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return ternarize(w, self.factor)[0]


class TernarySettings(LowbitSettings):
    """Settings of ``twn``.

    Attributes
    ----------
    threshold : float
        The factor of ``delta = threshold * E|W|``, in (0, 2); 0.7 in the paper. Per tensor
        with ``tensors: {fqn: {threshold: ...}}``.
    layers, exclude, epochs, lr, ...
        As in ``LowbitSettings``.
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("threshold",)

    threshold: float = Field(0.7, gt=0, lt=2)


@register_method("twn")
class TernaryWeightNetworks(LowbitMethod[TernarySettings]):
    """Ternary weights ``a * {-1, 0, 1}`` per layer, trained with the straight-through estimator."""

    Settings = TernarySettings

    def weight_quantizer(self, name: str, layer: Layer, settings: TernarySettings) -> TernaryWeight:
        return TernaryWeight(settings.threshold)

    def stored_planes(self, name: str) -> tuple[int, int]:
        return 2, 2  # bipolar planes w >= 0 and w > 0, a / 2 for each
