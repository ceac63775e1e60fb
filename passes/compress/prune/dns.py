"""Dynamic Network Surgery: Guo, Yao and Chen (2016), "Dynamic Network Surgery for Efficient
DNNs", NeurIPS, arXiv:1608.04493.

Masks change while the network trains. Before a training forward pass, with probability
``sigma(k) = (1 + gamma * k)^-power`` at iteration ``k`` (non-increasing, ``sigma(0) = 1``, section
3.3), every mask is updated from the dense weights ``W`` (eq. 4): ``T = 0`` where ``|W| < a``,
``T = 1`` where ``|W| >= b``, unchanged in between. Gradients reach every dense weight, pruned
ones included (eq. 3, straight-through), so a pruned weight that grows past ``b`` is spliced back.

The paper sets ``a = 0.9 theta`` and ``b = 1.1 theta`` with ``theta = max(mu + c sigma, 0)``
from the mean and standard deviation of ``|W|`` at the start and a hand-picked ``c`` per layer.
Here ``margin`` sets ``a = (1 - margin) theta`` and ``b = (1 + margin) theta``; with ``crate``
(``c``) the paper's thresholds are used, otherwise ``theta`` is solved from ``sparsity``: the
first surgery removes exactly ``sparsity`` of each layer (``scope: global``: of all layers, with
one ``theta``) and ``a`` is the largest magnitude it removes. The final sparsity then drifts
with training and is logged.
"""

from __future__ import annotations

from typing import Literal, Self

import torch
from pydantic import Field, model_validator
from torch.utils.hooks import RemovableHandle

from ..base import CompressContext, register_method
from .base import PruneSettings, PruningMethod


class DnsSettings(PruneSettings):
    """Settings of ``dns``.

    Attributes
    ----------
    margin : float
        ``a = (1 - margin) theta``, ``b = (1 + margin) theta``; in [0, 1), 0.1 in the paper.
    crate : float or None
        The paper's ``c`` (``theta = mu + c sigma`` of each layer's ``|W|``) instead of
        ``sparsity``; only with ``scope: layer``.
    gamma, power : float
        Surgery probability ``(1 + gamma * k)^-power`` at training iteration ``k``.
    schedule
        Only ``one-shot``: the first surgery is at ``start_epoch``.
    """

    schedule: Literal["one-shot"] = "one-shot"
    margin: float = Field(0.1, ge=0, lt=1)
    crate: float | None = None
    gamma: float = Field(1e-4, ge=0)
    power: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _crate_or_sparsity(self) -> Self:
        if self.crate is not None and ("sparsity" in self.model_fields_set or self.tensors):
            raise ValueError("give either crate (the paper's c) or sparsity, not both")
        if self.crate is not None and self.scope != "layer":
            raise ValueError("crate sets per-layer thresholds: it needs scope 'layer'")
        return self


@register_method("dns")
class DynamicNetworkSurgery(PruningMethod[DnsSettings]):
    """Prune and splice weights during training with two magnitude thresholds."""

    Settings = DnsSettings
    straight_through = True

    def __init__(self, settings: DnsSettings) -> None:
        super().__init__(settings)
        self.thresholds: dict[str, tuple[float, float]] = {}
        self.iteration = 0
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.hook: RemovableHandle | None = None

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        model = super().prepare(model, ctx)
        self.hook = model.register_forward_pre_hook(self._surgery)
        return model

    def scores(
        self, model: torch.nn.Module, ctx: CompressContext, names: list[str]
    ) -> dict[str, torch.Tensor]:
        return {n: self.dense(n).detach().abs() for n in names}

    def make_mask(
        self, score: torch.Tensor, sparsity: float, settings: DnsSettings, current: torch.Tensor
    ) -> torch.Tensor:
        if settings.crate is None:
            return super().make_mask(score, sparsity, settings, current)
        return score >= self._crate_thresholds(score)[0]

    def on_pruned(self, model: torch.nn.Module) -> None:
        s = self.settings
        if s.crate is not None:
            self.thresholds = {n: self._crate_thresholds(self.dense(n).abs()) for n in self.layers}
        else:
            largest = {n: self._largest_pruned(n) for n in self.layers}
            pooled = [n for n in self.layers if s.scope == "global" and not self._overridden(n)]
            shared = max((largest[n] for n in pooled), default=0.0)
            for n in pooled:
                largest[n] = shared
            theta = {n: a / (1 - s.margin) for n, a in largest.items()}
            self.thresholds = {n: (a, (1 + s.margin) * theta[n]) for n, a in largest.items()}
        self._log(
            "thresholds (a, b): "
            + ", ".join(f"{n} ({a:.4g}, {b:.4g})" for n, (a, b) in self.thresholds.items())
        )

    def _crate_thresholds(self, magnitude: torch.Tensor) -> tuple[float, float]:
        s = self.settings
        assert s.crate is not None
        magnitude = magnitude.detach()
        mu, sigma = float(magnitude.mean()), float(magnitude.std()) if magnitude.numel() > 1 else 0
        theta = max(mu + s.crate * sigma, 0.0)
        return (1 - s.margin) * theta, (1 + s.margin) * theta

    def _largest_pruned(self, name: str) -> float:
        pruned = self.dense(name).detach().abs()[self.mask(name) == 0]
        return float(pruned.max()) if pruned.numel() else 0.0

    def _surgery(self, model: torch.nn.Module, args: tuple[object, ...]) -> None:
        if not (model.training and torch.is_grad_enabled() and self.thresholds):
            return
        s = self.settings
        chance = (1 + s.gamma * self.iteration) ** -s.power
        self.iteration += 1
        if float(torch.rand((), generator=self.generator)) >= chance:
            return
        with torch.no_grad():
            for n, (a, b) in self.thresholds.items():
                w, mask = self.dense(n).abs(), self.mask(n)
                mask.copy_(torch.where(w < a, 0.0, torch.where(w >= b, 1.0, mask)))

    def squash(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.hook is not None:
            self.hook.remove()
        return super().squash(model)
