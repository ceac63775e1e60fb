"""Pruning schedules: the sparsity a tensor should have after a number of training epochs.

* ``one-shot``: the final sparsity at ``start_epoch`` (0: at ``prepare``, before any training).
* ``iterative``: Han et al. (2015), "Learning both Weights and Connections for Efficient Neural
  Networks": prune, retrain, prune more. ``steps`` equal increments of sparsity at epochs spread
  evenly over ``[start_epoch, end_epoch]``; several steps fall on one epoch when there are more
  steps than epochs.
* ``gradual``: Zhu and Gupta (2017), "To prune, or not to prune: exploring the efficacy of pruning
  for model compression", eq. 1: ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t_end - t0))^3`` after
  every epoch ``t`` in ``[t0, t_end]`` (the paper updates every few hundred batches; the digits
  epochs are that short).

Epochs are counted as completed epochs of the fine-tuning phase the schedule runs in: the
method's own phase when ``epochs > 0``, otherwise the next phase of the recipe (``finetune``).
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["end_epoch", "sparsity_at"]

Schedule = Literal["one-shot", "iterative", "gradual"]


def end_epoch(start: int, end: int | None, epochs: int) -> int:
    """``end`` if set, else two thirds through a phase of ``epochs`` epochs (after ``start``).

    Leaves the last third of the phase to recover at the final sparsity.
    """
    if end is not None:
        return min(end, max(epochs, start + 1))
    return max(start + 1, math.ceil(2 * epochs / 3))


def sparsity_at(
    schedule: Schedule,
    final: float,
    completed: int,
    epochs: int | None,
    *,
    start: int = 0,
    end: int | None = None,
    steps: int = 1,
    initial: float = 0.0,
) -> float:
    """Target sparsity after ``completed`` epochs of a phase of ``epochs`` epochs.

    Parameters
    ----------
    schedule : {"one-shot", "iterative", "gradual"}
    final : float
        The sparsity the schedule ends at.
    completed : int
        Epochs completed (0 at ``prepare``).
    epochs : int or None
        Length of the phase; ``None`` while it is not known yet (at ``prepare`` of a method
        without its own phase): only the point at ``start`` is placed then.
    start, end, steps, initial
        ``start_epoch``, ``end_epoch``, ``steps`` and ``initial_sparsity`` of the settings.

    Returns
    -------
    float
        A sparsity in ``[0, final]``, non-decreasing in ``completed``; exactly ``final`` from
        the schedule's end on.
    """
    if completed < start:
        return 0.0
    if schedule == "one-shot":
        return final
    if epochs is None:
        return final / steps if schedule == "iterative" else min(initial, final)
    stop = end_epoch(start, end, epochs)
    if schedule == "iterative":
        points = [start + round(j * (stop - start) / max(steps - 1, 1)) for j in range(steps)]
        return final * sum(p <= completed for p in points) / steps
    if completed >= stop:
        return final
    s_i = min(initial, final)
    return final + (s_i - final) * (1 - (completed - start) / (stop - start)) ** 3
