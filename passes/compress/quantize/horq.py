"""High-Order Residual Quantization: Li, Ni, Zhang, Yang and Gao (2017), "Performance Guaranteed
Network Acceleration via High-Order Residual Quantization", ICCV, arXiv:1708.08687.

A tensor is binarized, then the residual of that approximation is binarized again, ``order``
times (section 3.1): ``R_0 = X``, ``H_i = sign(R_{i-1})``, ``beta_i = mean |R_{i-1}|``,
``R_i = R_{i-1} - beta_i H_i``, so that ``X ~ sum_i beta_i H_i`` and the error ``|R_i|`` shrinks
with every order (``beta_i`` is the least-squares scale of ``H_i``: ``|R_i|^2 = |R_{i-1}|^2 -
n beta_i^2``). The inputs of every binary layer are quantized this way, ``beta_i`` per position
(over channels; per row for ``Linear``) and the convolution's scale map is the box filter of
XNOR-Net (``lowbit_act``); order 1 is XNOR-Net. As in the paper the weights are residual-
binarized too, ``alpha_j`` per output filter, so a filter of order ``k`` holds at most ``2^k``
distinct values ``sum_j alpha_j s_j``. Gradients pass every sign by the straight-through estimator
(``1{|r| <= 1}``) and flow through the scales and residuals by autograd. The first and last
layers stay float by default, as in the paper (it follows XNOR-Net).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from ..base import register_method
from ..prune.layers import Layer
from .lowbit_base import WeightQuantizer, per_filter_mean_abs, sign, sign_ste
from .lowbit_method import BinaryInputSettings, LowbitMethod

__all__ = ["Horq", "HorqSettings", "ResidualBinaryWeight", "residual_binarize"]


def residual_binarize(
    w: torch.Tensor, order: int, ste: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(sum_j alpha_j sign(R_{j-1}), [R_1, ..., R_order])`` per output filter of ``w``.

    With ``ste`` the signs use the straight-through estimator (for training).
    """
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    binarized = sign_ste if ste else sign
    q = torch.zeros_like(w)
    residuals, r = [], w
    for _ in range(order):
        term = per_filter_mean_abs(r) * binarized(r)
        q = q + term
        r = r - term
        residuals.append(r)
    return q, residuals


class ResidualBinaryWeight(WeightQuantizer):
    """The parametrization ``weight = sum_j alpha_j sign(R_{j-1})`` of order ``order``."""

    def __init__(self, order: int) -> None:
        super().__init__()
        self.order = order

    def extra_repr(self) -> str:
        return f"order={self.order}"

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return residual_binarize(w, self.order)[0]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return residual_binarize(w, self.order, ste=True)[0]


class HorqSettings(BinaryInputSettings):
    """Settings of ``horq``.

    Attributes
    ----------
    order : {2, 3}
        Residual order of the inputs (the paper's orders 2 and 3; order 1 is ``xnor``).
    weight_order : {1, 2, 3} or None
        Residual order of the weights; ``None``: ``order``. Both are per tensor with
        ``tensors: {fqn: {order: ...}}``.
    first, last : {"float", "weights", "binary"}
        Float by default (as XNOR-Net and the paper).
    layers, exclude, epochs, lr, ...
        As in ``LowbitSettings``.
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("order", "weight_order")

    order: Literal[2, 3] = 2
    weight_order: Literal[1, 2, 3] | None = None


@register_method("horq")
class Horq(LowbitMethod[HorqSettings]):
    """Residual binarization of order 2 or 3 of the inputs and the weights."""

    Settings = HorqSettings

    def _weight_order(self, settings: HorqSettings) -> int:
        return settings.weight_order or settings.order

    def weight_quantizer(
        self, name: str, layer: Layer, settings: HorqSettings
    ) -> ResidualBinaryWeight:
        return ResidualBinaryWeight(self._weight_order(settings))

    def input_spec(self, name: str, layer: Layer, settings: HorqSettings) -> tuple[int, bool]:
        return settings.order, True

    def stored_planes(self, name: str) -> tuple[int, int]:
        k = self._weight_order(self.settings.for_tensor(name))
        return k, k
