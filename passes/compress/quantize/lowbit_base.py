"""Shared utilities of the low-bit methods: straight-through estimators and weight quantizers.

A low-bit method keeps the latent float weights as trainable parameters and quantizes them in
the forward pass with a ``torch.nn.utils.parametrize`` parametrization (a ``WeightQuantizer``):
``layer.weight`` is the quantized weight, ``layer.parametrizations.weight.original`` the latent
one, and buffers of the quantizer (INQ's frozen mask) appear in ``state_dict()``, so a prepared
model saves and loads like a pruned one. Gradients reach the latent weights through a
straight-through estimator (``sign_ste``, ``straight_through``). ``detach_quantizer`` bakes the
quantized values into a plain float weight (the values-only contract of
``squeezer.passes.compress.quantize``). The method base class is in ``lowbit_method``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch.nn.utils import parametrize

from squeezer.errors import RecipeError

from ..prune.layers import Layer

__all__ = [
    "WeightQuantizer",
    "check_finite",
    "detach_quantizer",
    "per_filter_mean_abs",
    "sign",
    "sign_ste",
    "straight_through",
]


def sign(x: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``x >= 0``, else ``-1`` (sign with ``sign(0) := +1``), in ``x``'s dtype."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # The gradient of hardtanh: cancelled where |x| > 1 (Courbariaux et al., 2016, eq. 4).
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` forward; backward the straight-through estimator ``grad * 1{|x| <= 1}``."""
    return cast(torch.Tensor, _SignSTE.apply(x))


class _Straight(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return q.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The value ``q`` exactly, with the gradient passed to ``w`` unchanged (identity STE)."""
    return cast(torch.Tensor, _Straight.apply(w, q.detach()))


def per_filter_mean_abs(w: torch.Tensor) -> torch.Tensor:
    """``mean |w|`` over each output filter (all dims but 0), shaped to broadcast against ``w``."""
    return w.abs().reshape(w.shape[0], -1).mean(1).reshape(-1, *[1] * (w.dim() - 1))


def check_finite(method: str, name: str, w: torch.Tensor) -> None:
    """Raise ``RecipeError`` naming the tensor if ``w`` holds NaN or infinity."""
    bad = ~torch.isfinite(w.detach())
    if bool(bad.any()):
        nan = int(w.detach().isnan().sum())
        raise RecipeError(
            f"{method}: weight {name!r} has {nan} NaN and {int(bad.sum()) - nan} infinite values "
            f"of {w.numel()}; cannot quantize it"
        )


class WeightQuantizer(torch.nn.Module):
    """A parametrization ``weight = quantize(original)`` with a straight-through gradient.

    Subclasses define ``quantize`` (the exact values, no gradient) and may override ``forward``
    for a gradient other than the identity.
    """

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """The quantized values of the latent weight ``w`` (a float tensor of its shape)."""
        raise NotImplementedError

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            q = self.quantize(w)
        return straight_through(w, q)


def detach_quantizer(layer: Layer, quantizer: torch.nn.Module) -> None:
    """Bake the quantized weight into ``layer``'s parameter and remove ``quantizer``.

    Other parametrizations of the weight stay; the parameter becomes the quantized value, which
    is exact when those before ``quantizer`` leave it unchanged (masks whose zeros it keeps).
    """
    owner, attr = layer.owner, layer.attr
    plists = cast(torch.nn.ModuleDict, owner.parametrizations)
    plist = cast(parametrize.ParametrizationList, plists[attr])
    with torch.no_grad():
        value = getattr(owner, attr).detach().clone()
    if len(plist) == 1:
        parametrize.remove_parametrizations(owner, attr, leave_parametrized=False)
        with torch.no_grad():
            getattr(owner, attr).copy_(value)
        return
    index = next(i for i, p in enumerate(plist) if p is quantizer)
    with torch.no_grad():
        plist.original.copy_(value)
    del plist[index]
    with torch.no_grad():
        if not torch.equal(getattr(owner, attr), value):
            raise RecipeError(
                f"{layer.tensor}: the parametrizations left on this weight change its quantized "
                "values; squash them before the quantizer"
            )
