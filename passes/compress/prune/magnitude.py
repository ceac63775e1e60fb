"""Magnitude pruning: Han, Pool, Tran and Dally (2015), "Learning both Weights and Connections
for Efficient Neural Networks", NeurIPS, arXiv:1506.02626.

The saliency of a weight is its magnitude ``|w|``: the smallest are removed, the network is
retrained, and with the ``iterative`` schedule pruned and retrained again (section 3.3). The
paper sets a layer's threshold as a quality factor times the standard deviation of its weights;
here the threshold is the one that removes exactly ``sparsity`` of the weights. With
``scope: global`` one threshold on ``|w|`` covers all layers (global magnitude pruning): raw
magnitudes are compared, so layers with small weights (wide layers with a small initialization
scale) lose more.
"""

from __future__ import annotations

import torch

from ..base import CompressContext, register_method
from .base import PruneSettings, PruningMethod


class MagnitudeSettings(PruneSettings):
    """Settings of ``magnitude``: those of ``PruneSettings``, nothing more."""


@register_method("magnitude")
class MagnitudePruning(PruningMethod[MagnitudeSettings]):
    """Remove the weights of smallest magnitude (Han et al., 2015)."""

    Settings = MagnitudeSettings

    def scores(
        self, model: torch.nn.Module, ctx: CompressContext, names: list[str]
    ) -> dict[str, torch.Tensor]:
        return {n: self.layers[n].weight.detach().abs() for n in names}
