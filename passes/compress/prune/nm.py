"""N:M semi-structured sparsity: Mishra et al. (2021), "Accelerating Sparse Deep Neural
Networks", arXiv:2104.08378 (NVIDIA's 2:4 recipe: train dense, prune N:M by magnitude once,
retrain with the pattern fixed).

In every group of ``m`` consecutive weights along the reduction dimension exactly ``n`` are
kept: the ``n`` of largest magnitude (ties: the earlier ones are removed first). Groups run along
the rows of the ``(out, in * kh * kw)`` matrix view (``masks.matrix_view``), so for a convolution
a group spans consecutive ``(in, kh, kw)`` positions, the im2col order of the sparse kernels.
Layers whose row length is not a multiple of ``m`` are left dense (and logged) when chosen by
default, and are an error when named in ``layers``. The schedule is always one-shot.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

import torch
from pydantic import Field, model_validator

from ..base import CompressContext, register_method
from .base import PruneSettings, PruningMethod
from .layers import Layer
from .masks import matrix_view


class NmSettings(PruneSettings):
    """Settings of ``nm``.

    Attributes
    ----------
    n, m : int
        Keep ``n`` of every ``m`` consecutive weights, ``1 <= n < m <= 64``; per tensor too.
    sparsity : float
        Implied: ``1 - n / m``; giving another value is an error.
    scope, schedule
        Only ``layer`` and ``one-shot``: N:M is a pattern inside each group.
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("n", "m")

    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2, le=64)
    scope: Literal["layer"] = "layer"
    schedule: Literal["one-shot"] = "one-shot"

    @model_validator(mode="before")
    @classmethod
    def _implied_sparsity(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        n, m = data.get("n", 2), data.get("m", 4)
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
            raise ValueError(f"n:m must satisfy 1 <= n < m, got {n}:{m}")
        implied = 1 - n / m
        given = data.get("sparsity", implied)
        if isinstance(given, int | float) and abs(given - implied) > 1e-9:
            raise ValueError(f"sparsity {given} contradicts {n}:{m} (sparsity {implied}); omit it")
        return {**data, "sparsity": implied}

    def _merged(self, override: dict[str, Any]) -> Self:
        base = self.model_dump(exclude={"tensors", "sparsity"})
        return type(self).model_validate({**base, **override})


@register_method("nm")
class NmPruning(PruningMethod[NmSettings]):
    """Keep the ``n`` largest-magnitude weights in every group of ``m`` along the rows."""

    Settings = NmSettings

    def scores(
        self, model: torch.nn.Module, ctx: CompressContext, names: list[str]
    ) -> dict[str, torch.Tensor]:
        return {n: self.layers[n].weight.detach().abs() for n in names}

    def not_applicable(self, layer: Layer) -> str | None:
        s = self.settings.for_tensor(layer.tensor)
        cols = matrix_view(layer.weight).shape[1]
        if cols % s.m:
            return f"its rows have {cols} weights (in*kh*kw), not a multiple of m={s.m}"
        return None

    def make_mask(
        self, score: torch.Tensor, sparsity: float, settings: NmSettings, current: torch.Tensor
    ) -> torch.Tensor:
        n, m = settings.n, settings.m
        groups = matrix_view(score).reshape(-1, m)
        order = torch.sort(groups, dim=1, stable=True).indices
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(1, order[:, : m - n], False)
        return keep.reshape(score.shape)
