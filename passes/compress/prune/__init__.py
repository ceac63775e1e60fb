"""Pruning methods: masks over a method's lifecycle, schedules, and sparse storage sizes.

Building a pruning method (the shared part, ``base``)::

    class MySettings(PruneSettings):      # sparsity, scope, schedule, steps, initial_sparsity,
        ...                               # start_epoch, end_epoch, layers, exclude, tensors,
                                          # and TrainSettings (epochs, lr, ...)

    @register_method("mine")
    class Mine(PruningMethod[MySettings]):
        Settings = MySettings
        def scores(self, model, ctx, names):    # {tensor name: weight-shaped saliency}, higher
            ...                                 # = keep; self.layers[n].weight is the masked
                                                # weight, self.dense(n) the parameter under it
        # optional: make_mask(score, sparsity, settings, current) for a structured pattern,
        # group_scores/expand_units for units larger than a weight, update_weights(model,
        # masks) to compensate the kept weights, not_applicable(layer), sparse_bytes(w, name),
        # straight_through = True to let gradients reach pruned weights.

``PruningMethod`` attaches ``masks.WeightMask`` parametrizations in ``prepare``, prunes by the
schedule in ``prepare``/``step`` with exactly ``round(sparsity * units)`` units removed
(``masks.keep_mask``), and in ``squash`` multiplies the masks in and removes them;
``stored_bytes`` reports CSR sizes (BSR for ``block``). ``sparsity_report(model)`` gives the
fraction of zeros per weight. Methods: ``magnitude`` (Han et al. 2015), ``nm`` (N:M), ``block``
(Kadetotad et al. 2016), ``dns`` (Guo et al. 2016).
"""

from . import (
    block,  # noqa: F401  (registers "block")
    datafree,  # noqa: F401  (registers "datafree")
    density_diversity,  # noqa: F401  (registers "density_diversity")
    dns,  # noqa: F401  (registers "dns")
    guided,  # noqa: F401  (registers "guided")
    magnitude,  # noqa: F401  (registers "magnitude")
    nm,  # noqa: F401  (registers "nm")
    obd,  # noqa: F401  (registers "obd")
    obs,  # noqa: F401  (registers "obs")
)
from .base import PruneSettings, PruningMethod
from .layers import Layer, sparsity_report

__all__ = ["Layer", "PruneSettings", "PruningMethod", "sparsity_report"]
