"""Density-diversity penalty: Wang, Cai, Bilmes and Noble (2017), "Training Compressed
Fully-Connected Networks with a Density-Diversity Penalty", ICLR.

While training, every fully connected weight matrix ``W`` (``n`` entries) is penalized by
``strength * (||W||_p + sum_{i<j} |w_i - w_j|)``: the density term drives weights to zero, the
diversity term pulls them towards each other, so that few distinct values remain. The pairwise
sum is computed in ``O(n log n)`` with the paper's sorting trick: over the sorted values
``w_(1) <= ... <= w_(n)`` it equals ``sum_r (2r - n - 1) w_(r)``, and its (sub)gradient with
respect to ``w_(r)`` is the constant ``2r - n - 1`` (autograd through ``torch.sort`` routes it
back to the weight's position). With ``normalize`` (default) the diversity term is divided by
``n - 1``, so that both terms' gradients per weight are at most ``strength`` in magnitude and one
``strength`` suits layers of any size; ``normalize: false`` is the paper's form, where the
per-layer ``strength`` (``tensors``) absorbs the scale. The paper's experiments use ``p = 2``.

The paper alternates the penalized training with weight tying. Here the weights of smallest
magnitude are zeroed by the pruning ``schedule`` (``gradual`` by default) up to ``sparsity`` and
stay zero (masks); from ``tie_from`` on (by default: once the final sparsity is reached), after
every epoch the remaining weights of each layer are tied to at most ``clusters`` distinct values
by a one-dimensional k-means (linear initialization, then warm-started from the previous
centers), and kept tied in between: before every training step each weight is set to the mean of
its group, so a group moves by the mean of its members' updates. The final weights have exactly
``sparsity`` zeros and at most ``clusters`` distinct nonzero values per layer (logged).

Used with ``epochs: 0`` before a ``finetune`` entry, the penalty is added to the fine-tuning loss
and the schedule and tying run in that phase.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from squeezer.data import cross_entropy

from ..base import CompressContext, register_method
from .base import PruningMethod
from .layers import Layer
from .masks import dense_of
from .schedule import end_epoch
from .settings import PruneSettings

__all__ = ["DensityDiversity", "DensityDiversitySettings", "diversity", "tie_values"]


class DensityDiversitySettings(PruneSettings):
    """Settings of ``density_diversity``.

    Attributes
    ----------
    strength : float
        The penalty's ``lambda``; per tensor too.
    p : {1, 2}
        Norm of the density term.
    normalize : bool
        Divide the diversity term by ``n - 1`` (see the module docstring).
    clusters : int
        Distinct nonzero values per layer after tying.
    tie_from : int or None
        Completed epochs after which tying starts; ``None``: when the schedule reaches the final
        sparsity (``start_epoch`` for ``one-shot``, else ``end_epoch``).
    schedule, epochs
        ``gradual`` over a 10-epoch phase by default.
    layers
        Fully connected layers only (the default: every ``Linear``).
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("sparsity", "strength")

    strength: float = Field(1e-4, ge=0)
    p: Literal[1, 2] = 1
    normalize: bool = True
    clusters: int = Field(16, ge=1)
    tie_from: int | None = Field(None, ge=0)
    schedule: Literal["one-shot", "iterative", "gradual"] = "gradual"
    epochs: int = Field(10, ge=0)


def diversity(w: torch.Tensor) -> torch.Tensor:
    """``sum_{i<j} |w_i - w_j|`` over all entries of ``w`` in ``O(n log n)`` (sorting trick)."""
    v = w.reshape(-1).sort().values
    n = v.numel()
    coef = torch.arange(1 - n, n, 2, dtype=v.dtype, device=v.device)  # 2r - n - 1, r = 1..n
    return (coef * v).sum()


def tie_values(
    values: torch.Tensor, clusters: int, centers: torch.Tensor | None = None, iters: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-dimensional k-means (Lloyd) of ``values`` into at most ``clusters`` centers.

    Parameters
    ----------
    values : (m,) Tensor
    clusters : int
    centers : Tensor, optional
        Sorted starting centers (a warm start); linearly spaced over ``[min, max]`` otherwise.

    Returns
    -------
    (Tensor, Tensor)
        The used centers, sorted, and the index of every value's center.
    """
    v = values.detach().double()
    if centers is None or centers.numel() == 0:
        centers = torch.linspace(float(v.min()), float(v.max()), clusters, dtype=v.dtype)
    centers = centers.double()
    for _ in range(iters):
        idx = torch.bucketize(v, (centers[1:] + centers[:-1]) / 2)
        sums = torch.zeros_like(centers).index_add_(0, idx, v)
        counts = torch.zeros_like(centers).index_add_(0, idx, torch.ones_like(v))
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
        if torch.equal(new, centers):
            break
        centers = new  # in one dimension Lloyd's step keeps the centers sorted
    idx = torch.bucketize(v, (centers[1:] + centers[:-1]) / 2)
    used, idx = torch.unique(idx, return_inverse=True)
    return centers[used].to(values.dtype), idx


@register_method("density_diversity")
class DensityDiversity(PruningMethod[DensityDiversitySettings]):
    """Train with the density-diversity penalty, zero small weights, tie the rest."""

    Settings = DensityDiversitySettings

    def __init__(self, settings: DensityDiversitySettings) -> None:
        super().__init__(settings)
        self.groups: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # kept index, group
        self.centers: dict[str, torch.Tensor] = {}
        self.tying = False
        self.hook: RemovableHandle | None = None
        self.strength: dict[str, float] = {}

    def not_applicable(self, layer: Layer) -> str | None:
        return None if layer.kind == "Linear" else "the penalty is for fully connected layers"

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        model = super().prepare(model, ctx)
        self.strength = {n: self.settings.for_tensor(n).strength for n in self.layers}
        self.hook = model.register_forward_pre_hook(self._keep_tied)
        if self.settings.tie_from == 0:
            self._tie()
        return model

    def penalty(self) -> torch.Tensor:
        """The density-diversity penalty of all pruned layers (differentiable)."""
        s = self.settings
        total = torch.zeros(())
        for n, layer in self.layers.items():
            w = layer.weight.reshape(-1)
            density = w.abs().sum() if s.p == 1 else w.norm()
            div = diversity(w) / max(w.numel() - 1, 1) if s.normalize else diversity(w)
            total = total + self.strength[n] * (density + div)
        return total

    def loss_term(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        term = self.penalty()
        return term + cross_entropy(model, x, y) if self.phase is not None else term

    def scores(
        self, model: torch.nn.Module, ctx: CompressContext, names: list[str]
    ) -> dict[str, torch.Tensor]:
        return {n: self.dense(n).detach().abs() for n in names}

    def on_pruned(self, model: torch.nn.Module) -> None:
        if self.tying:
            self._tie()

    def step(self, model: torch.nn.Module, epoch: int, epochs: int) -> None:
        super().step(model, epoch, epochs)
        s = self.settings
        start = s.tie_from
        if start is None:
            start = (
                s.start_epoch
                if s.schedule == "one-shot"
                else end_epoch(s.start_epoch, s.end_epoch, epochs)
            )
        if epoch + 1 >= start:
            self._tie()

    def squash(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.hook is not None:
            self.hook.remove()
        model = super().squash(model)  # prunes to the final sparsity if the schedule had not
        self.groups = {}
        parts = []
        for n, layer in self.layers.items():
            w = layer.weight  # the dense parameter unless another method parametrizes it
            if parametrize.is_parametrized(layer.owner, layer.attr):
                w = dense_of(layer.owner, layer.attr)
            kept = w.detach().reshape(-1).nonzero().squeeze(1)
            if kept.numel() == 0:
                continue
            centers, group = tie_values(w.detach().reshape(-1)[kept], self.settings.clusters,
                                        self.centers.get(n))  # fmt: skip
            with torch.no_grad():
                w.view(-1)[kept] = centers[group]
            zeros = 1 - kept.numel() / w.numel()
            parts.append(f"{n} {zeros:.1%} zeros, {centers.numel()} distinct nonzero values")
        self._log("tied: " + ", ".join(parts))
        return model

    def _tie(self) -> None:
        self.tying = True
        for n in self.layers:
            w = self.dense(n).detach().reshape(-1)
            kept = self.mask(n).reshape(-1).nonzero().squeeze(1)
            if kept.numel() == 0:
                continue
            centers, group = tie_values(w[kept], self.settings.clusters, self.centers.get(n))
            self.centers[n], self.groups[n] = centers, (kept, group)
            with torch.no_grad():
                w[kept] = centers[group]

    def _keep_tied(self, model: torch.nn.Module, args: tuple[object, ...]) -> None:
        if not (model.training and torch.is_grad_enabled() and self.groups):
            return
        with torch.no_grad():
            for n, (kept, group) in self.groups.items():
                w = self.dense(n).view(-1)
                sums = torch.zeros(int(group.max()) + 1, dtype=w.dtype)
                sums.index_add_(0, group, w[kept])
                counts = torch.bincount(group, minlength=sums.numel()).to(w.dtype)
                means = sums / counts
                self.centers[n] = means
                w[kept] = means[group]
